import { describe, expect, test } from "vitest";

import vectors from "../../../tests/data/segment_vectors.json";
import { countSegments, type SegmentCount } from "./segments";

/** One entry of tests/data/segment_vectors.json, shared with tests/test_segments.py. */
interface Vector {
  name: string;
  body: string;
  encoding: "GSM-7" | "UCS-2";
  segments: number;
  units: number;
  first_non_gsm: string;
}

const all: readonly Vector[] = vectors as Vector[];

/** The segment size that applies: the single-segment size for 0 or 1 segment, else the part size. */
function perSegment(v: Vector): number {
  if (v.encoding === "GSM-7") return v.segments > 1 ? 153 : 160;
  return v.segments > 1 ? 67 : 70;
}

describe(`countSegments over ${all.length} vectors`, () => {
  test("names are unique", () => {
    expect(new Set(all.map((v) => v.name)).size).toBe(all.length);
  });

  test.each(all.map((v) => [v.name, v] as const))("%s", (_name, v) => {
    const expected: SegmentCount = {
      encoding: v.encoding,
      segments: v.segments,
      units: v.units,
      perSegment: perSegment(v),
      firstNonGsm: v.first_non_gsm,
    };
    expect(countSegments(v.body)).toEqual(expected);
  });
});
