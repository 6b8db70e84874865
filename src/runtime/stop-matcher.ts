// Stop strings over streamed text: a stop string split across tokens still stops, and no part of
// it is ever emitted. Text that could be the start of a stop string is held back until it can't.
export class StopMatcher {
  private pending = '';

  constructor(private readonly stops: string[]) {}

  // Returns the text safe to emit now, and the stop string if one completed.
  push(text: string): { emit: string; stopped: string | null } {
    this.pending += text;
    if (this.stops.length === 0) return this.take(this.pending.length, null);
    let at = -1;
    let which: string | null = null;
    for (const s of this.stops) {
      const i = this.pending.indexOf(s);
      if (i !== -1 && (at === -1 || i < at)) { at = i; which = s; }
    }
    if (which !== null) {
      const emit = this.pending.slice(0, at);
      this.pending = '';
      return { emit, stopped: which };
    }
    return this.take(this.pending.length - this.heldSuffix(), null);
  }

  // At the end of generation, the held-back text is released.
  flush(): string {
    const rest = this.pending;
    this.pending = '';
    return rest;
  }

  private take(n: number, stopped: string | null): { emit: string; stopped: string | null } {
    const emit = this.pending.slice(0, n);
    this.pending = this.pending.slice(n);
    return { emit, stopped };
  }

  // Length of the longest suffix of pending that is a proper prefix of some stop string.
  private heldSuffix(): number {
    let best = 0;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, this.pending.length); k > best; k--) {
        if (this.pending.endsWith(s.slice(0, k))) { best = k; break; }
      }
    }
    return best;
  }
}
