// What a tick costs, learned from the ticks that ran (the numbers stepBudget needs):
//   decodeMs          a tick's decode steps with no prompt tokens: the median of the recent
//                     decode-only ticks (the scheduler runs one now and then to keep it fresh)
//   msPerPromptToken  the marginal cost of a prompt token: from mixed ticks, (ms − decodeMs) per
//                     token; from prefill-only ticks, ms per token (a little high: it includes the
//                     pass over the weights, so the budget errs toward latency)
// Both move with the batch and the machine's load, so they are recent: a short window and an
// exponential average.
const DECODE_WINDOW = 6;
const ALPHA = 0.3;
const MIN_TOKENS_TO_LEARN = 8; // smaller chunks measure noise, not tokens

export class TickCosts {
  private readonly decodeTicks: { rows: number; ms: number }[] = [];
  private perToken: number | null = null;

  observe(promptTokens: number, decodeRows: number, ms: number): void {
    if (promptTokens === 0) {
      if (decodeRows === 0) return;
      this.decodeTicks.push({ rows: decodeRows, ms });
      if (this.decodeTicks.length > DECODE_WINDOW) this.decodeTicks.shift();
      return;
    }
    if (promptTokens < MIN_TOKENS_TO_LEARN) return;
    let sample: number;
    if (decodeRows === 0) sample = ms / promptTokens;
    else {
      const d = this.decodeMs(decodeRows);
      if (d === null) return;
      sample = Math.max(0, ms - d) / promptTokens;
    }
    this.perToken = this.perToken === null ? sample : (1 - ALPHA) * this.perToken + ALPHA * sample;
  }

  // Predicted decode-only tick for `rows` decoding rows: the recent median, scaled up when the
  // batch has grown since (a decode step's cost grows slowly with rows; the scale is a bound).
  decodeMs(rows: number): number | null {
    if (this.decodeTicks.length === 0) return null;
    const sorted = this.decodeTicks.map((t) => t.ms).sort((a, b) => a - b);
    const median = sorted[sorted.length >> 1];
    const seenRows = Math.max(...this.decodeTicks.map((t) => t.rows));
    return rows > seenRows ? median * Math.min(2, 1 + 0.5 * (rows - seenRows) / seenRows) : median;
  }

  get msPerPromptToken(): number | null {
    return this.perToken;
  }

  get decodeSamples(): number {
    return this.decodeTicks.length;
  }
}
