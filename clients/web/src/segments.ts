/**
 * SMS encoding and segment counting, following Twilio's documented rules; the same algorithm as
 * server/segments.py, and both are tested against tests/data/segment_vectors.json.
 *
 * A body made only of GSM 03.38 default-alphabet and extension-table characters is GSM-7: 160
 * septets in one segment, else parts of 153. Extension characters (^{}\[~]|€ and form feed) take
 * two septets (escape + character) and such a pair is never split across parts. Anything else
 * makes the whole body UCS-2, counted in UTF-16 code units: 70 in one segment, else parts of 67;
 * a surrogate pair (e.g. most emoji) is never split across parts.
 *
 * Twilio's optional "Smart Encoding" (replacing look-alike Unicode characters such as curly quotes
 * with GSM-7 ones) is not modelled, and grapheme clusters are not kept together.
 */

export const GSM7 = "GSM-7";
export const UCS2 = "UCS-2";
export type SmsEncoding = typeof GSM7 | typeof UCS2;

export interface SegmentCount {
  /** "GSM-7" or "UCS-2". */
  encoding: SmsEncoding;
  /** Number of SMS segments; 0 for an empty body. */
  segments: number;
  /** GSM-7 septets (extension characters count 2) or UTF-16 code units. */
  units: number;
  /** The segment size that applies to this body: 160/153 for GSM-7, 70/67 for UCS-2. */
  perSegment: number;
  /** The first character (code point) that forced UCS-2; "" when the body is GSM-7. */
  firstNonGsm: string;
}

const GSM7_SINGLE = 160;
const GSM7_PART = 153;
const UCS2_SINGLE = 70;
const UCS2_PART = 67;

/** GSM 03.38 default alphabet, in code order 0x00-0x7F with the escape (0x1B) left out. */
const GSM7_BASIC: ReadonlySet<string> = new Set(
  "@£$¥èéùìòÇ\nØø\rÅå" +
    "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ" +
    " !\"#¤%&'()*+,-./" +
    "0123456789:;<=>?" +
    "¡ABCDEFGHIJKLMNO" +
    "PQRSTUVWXYZÄÖÑÜ§" +
    "¿abcdefghijklmno" +
    "pqrstuvwxyzäöñüà",
);

/** GSM 03.38 extension table: each is sent as the escape septet plus one more. */
const GSM7_EXTENSION: ReadonlySet<string> = new Set("\f^{}\\[~]|€");

/** Septets a character takes in GSM-7, or 0 if it is not in GSM-7. */
function septets(char: string): number {
  if (GSM7_BASIC.has(char)) return 1;
  if (GSM7_EXTENSION.has(char)) return 2;
  return 0;
}

/** Segments and the applicable segment size for indivisible items of the given sizes. */
function parts(sizes: readonly number[], single: number, part: number): [number, number] {
  const total = sizes.reduce((a, b) => a + b, 0);
  if (total === 0) return [0, single];
  if (total <= single) return [1, single];
  let segments = 1;
  let used = 0;
  for (const size of sizes) {
    if (used + size > part) {
      segments += 1;
      used = 0;
    }
    used += size;
  }
  return [segments, part];
}

/** Count the encoding, units and segments Twilio would use for `body`. */
export function countSegments(body: string): SegmentCount {
  // for..of walks code points: a surrogate pair is one item of length 2, a lone surrogate length 1.
  const codePoints = [...body];
  const sizes: number[] = [];
  for (const char of codePoints) {
    const size = septets(char);
    if (size === 0) {
      const units = codePoints.map((c) => c.length);
      const [segments, perSegment] = parts(units, UCS2_SINGLE, UCS2_PART);
      return { encoding: UCS2, segments, units: body.length, perSegment, firstNonGsm: char };
    }
    sizes.push(size);
  }
  const [segments, perSegment] = parts(sizes, GSM7_SINGLE, GSM7_PART);
  const units = sizes.reduce((a, b) => a + b, 0);
  return { encoding: GSM7, segments, units, perSegment, firstNonGsm: "" };
}
