// Time-series charts of the delivery dashboard, drawn by uPlot on a canvas. uPlot sizes its elements through
// element.style (CSSOM), which the page's Content-Security-Policy (style-src 'self') allows; its stylesheet is
// bundled from here. The chart follows its container's width (ResizeObserver); the canvas is a role="img" with a
// summary for screen readers, and the caller keeps a visually-hidden table of the same numbers beside it.
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { h } from "./dom.js";

export interface SeriesSpec {
  label: string;
  /** Line colour (any CSS colour). */
  stroke: string;
  dash?: number[];
}

export interface ChartOptions {
  testid: string;
  series: SeriesSpec[];
  /** Axis ticks and legend values of the y axis. */
  formatY: (value: number) => string;
  /** Only whole numbers on the y axis (counts). */
  integers?: boolean;
}

const AXIS = { stroke: "#4b5563", font: "11px system-ui, sans-serif", grid: "#eef0f3", ticks: "#d1d5db" };
const INT_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6];

/** Height for a chart `width` px wide: shorter on a phone. */
function heightFor(width: number): number {
  return width < 480 ? 170 : 220;
}

export class TimeChart {
  /** The chart's box (data-testid); uPlot's root goes inside. */
  readonly el: HTMLElement;
  private plot: uPlot | null = null;
  private data: uPlot.AlignedData;
  private label = "";
  private readonly observer: ResizeObserver;
  private frame = 0;

  constructor(private readonly opts: ChartOptions) {
    this.el = h("div", { class: "dv-chart", "data-testid": opts.testid });
    this.data = [[], ...opts.series.map(() => [])];
    this.observer = new ResizeObserver(() => {
      // After layout, once per frame: resizing inside the callback could loop.
      cancelAnimationFrame(this.frame);
      this.frame = requestAnimationFrame(() => this.fit());
    });
    this.observer.observe(this.el);
  }

  /** Shows `xs` (bucket starts, Unix seconds) against one array per series (null: no value, a gap). */
  setData(xs: number[], ys: (number | null)[][], summary: string): void {
    this.data = [xs, ...ys];
    this.label = summary;
    if (this.plot) this.plot.setData(this.data);
    else this.fit();
    this.labelCanvas();
  }

  destroy(): void {
    this.observer.disconnect();
    cancelAnimationFrame(this.frame);
    this.plot?.destroy();
    this.plot = null;
  }

  private fit(): void {
    const width = Math.floor(this.el.clientWidth);
    if (width <= 0) return; // not shown: sized when it is
    const height = heightFor(width);
    if (!this.plot) {
      this.plot = new uPlot(this.options(width, height), this.data, this.el);
      this.labelCanvas();
    } else if (this.plot.width !== width || this.plot.height !== height) {
      this.plot.setSize({ width, height });
    }
  }

  private labelCanvas(): void {
    if (!this.plot) return;
    const canvas = this.plot.ctx.canvas;
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", this.label);
    this.el.dataset.points = String(this.data[0].length);
  }

  private options(width: number, height: number): uPlot.Options {
    const { formatY, integers } = this.opts;
    const yAxis: uPlot.Axis = {
      stroke: AXIS.stroke,
      font: AXIS.font,
      grid: { stroke: AXIS.grid, width: 1 },
      ticks: { stroke: AXIS.ticks, width: 1 },
      // Wide enough for the longest tick label ("500 ms", "1,000").
      size: (_u, values) => Math.max(36, ...(values ?? []).map((v) => v.length * 7 + 18)),
      values: (_u, splits) => splits.map((v) => formatY(v)),
    };
    if (integers) yAxis.incrs = INT_INCRS;
    return {
      width,
      height,
      cursor: { drag: { x: false, y: false }, points: { size: 6 } },
      legend: { live: true },
      scales: {
        x: { time: true },
        // From zero; an empty window still shows an axis up to 1.
        y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.1 : 1] },
      },
      axes: [
        { stroke: AXIS.stroke, font: AXIS.font, grid: { stroke: AXIS.grid, width: 1 }, ticks: { stroke: AXIS.ticks, width: 1 } },
        yAxis,
      ],
      series: [
        { label: "Time" },
        ...this.opts.series.map(
          (s): uPlot.Series => ({
            label: s.label,
            stroke: s.stroke,
            width: 2,
            dash: s.dash,
            points: { size: 4 },
            spanGaps: false,
            value: (_u, v) => (v === null || v === undefined ? "–" : formatY(v)),
          }),
        ),
      ],
    };
  }
}
