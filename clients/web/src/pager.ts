// Keyset paging over one List RPC: a page at a time, in order; a reset drops the answers still on their way, since
// they belong to a listing that is gone.

export interface Page<T> {
  items: T[];
  nextPageToken: string;
}

/** A loaded page's items, or why it failed. */
export type PageOutcome<T> = { items: T[] } | { error: unknown };

export class Pager<T> {
  /** null: the first page is not loaded yet; "": there are no more pages. */
  private next: string | null = null;
  private busy = false;
  private generation = 0;

  constructor(private readonly fetchPage: (pageToken: string) => Promise<Page<T>>) {}

  get loading(): boolean {
    return this.busy;
  }

  /** The first page has been loaded. */
  get started(): boolean {
    return this.next !== null;
  }

  /** The last page has been loaded. */
  get finished(): boolean {
    return this.next === "";
  }

  /** A page was loaded and said there are more. */
  get more(): boolean {
    return !!this.next;
  }

  /**
   * Starts loading the next page, or returns null (at once) when one is on its way or none is left; `loading` is true
   * as soon as this returns a promise, so callers can show it. The promise gives null when a reset came in meanwhile.
   */
  load(): Promise<PageOutcome<T> | null> | null {
    if (this.busy || this.next === "") return null;
    this.busy = true;
    return this.fetchNext(this.generation, this.next ?? "");
  }

  /** The first page again, leaving the position as it is: null before the first page, or after a reset meanwhile. */
  async first(): Promise<T[] | null> {
    if (this.next === null) return null;
    const generation = this.generation;
    const page = await this.fetchPage("");
    return generation === this.generation ? page.items : null;
  }

  /** Back to before the first page. */
  reset(): void {
    this.generation++;
    this.next = null;
    this.busy = false;
  }

  private async fetchNext(generation: number, pageToken: string): Promise<PageOutcome<T> | null> {
    try {
      const page = await this.fetchPage(pageToken);
      if (generation !== this.generation) return null;
      this.next = page.nextPageToken;
      return { items: page.items };
    } catch (error) {
      return generation === this.generation ? { error } : null;
    } finally {
      if (generation === this.generation) this.busy = false;
    }
  }
}
