// Training progress for a person watching: on a terminal, one live bar (cli-progress) with step,
// loss, tokens/s and ETA; otherwise (a log file, CI, a pipe) a plain line every few steps or
// seconds, since a bar's carriage returns make a log unreadable.
import cliProgress from 'cli-progress';

export interface ProgressUpdate {
  step: number;          // optimizer steps done
  loss: number;
  lr: number;
  tokensPerS: number;
  evalLoss?: number;
}

export interface Progress {
  update(u: ProgressUpdate): void;
  log(line: string): void;   // a message that must not be overwritten by the bar
  stop(): void;
}

export interface ProgressOptions {
  total: number;                                   // optimizer steps in the run
  startStep?: number;                              // a resumed run starts here (ETA counts from it)
  stream?: NodeJS.WritableStream & { isTTY?: boolean };
  everySteps?: number;                             // plain lines: at least every this many steps
  everyMs?: number;                                // … or when this long has passed since the last
  now?: () => number;                              // clock (tests)
}

export function createProgress(opts: ProgressOptions): Progress {
  const stream = opts.stream ?? process.stdout;
  return stream.isTTY ? barProgress(opts, stream) : lineProgress(opts, stream);
}

function barProgress(opts: ProgressOptions, stream: NodeJS.WritableStream): Progress {
  const multi = new cliProgress.MultiBar({
    stream,
    format: 'train |{bar}| {value}/{total} | loss {loss} | {tps} tok/s | lr {lr} | ETA {eta_formatted}',
    hideCursor: true,
    etaBuffer: 20,
  }, cliProgress.Presets.shades_classic);
  const bar = multi.create(opts.total, opts.startStep ?? 0, { loss: '-', tps: '-', lr: '-' });
  return {
    update(u) {
      bar.update(u.step, { loss: u.loss.toFixed(4), tps: Math.round(u.tokensPerS), lr: u.lr.toExponential(2) });
      if (u.evalLoss !== undefined) multi.log(`step ${u.step}: eval loss ${u.evalLoss.toFixed(4)}\n`);
    },
    log(line) {
      multi.log(`${line}\n`);
    },
    stop() {
      multi.update(); // draws the bar's last state and flushes lines logged since the last redraw
      multi.stop();
    },
  };
}

function lineProgress(opts: ProgressOptions, stream: NodeJS.WritableStream): Progress {
  const now = opts.now ?? Date.now;
  const everySteps = opts.everySteps ?? Math.max(1, Math.ceil(opts.total / 20));
  const everyMs = opts.everyMs ?? 30_000;
  const start = { step: opts.startStep ?? 0, t: now() };
  let last = { step: start.step, t: start.t };
  return {
    update(u) {
      const t = now();
      const due = u.step - last.step >= everySteps || t - last.t >= everyMs || u.step >= opts.total || u.evalLoss !== undefined;
      if (!due) return;
      last = { step: u.step, t };
      const done = u.step - start.step;
      const eta = done > 0 ? ((t - start.t) / done) * (opts.total - u.step) : NaN;
      const evalPart = u.evalLoss !== undefined ? ` eval_loss ${u.evalLoss.toFixed(4)}` : '';
      stream.write(`step ${u.step}/${opts.total} loss ${u.loss.toFixed(4)}${evalPart} lr ${u.lr.toExponential(2)} ${Math.round(u.tokensPerS)} tok/s eta ${formatDuration(eta)}\n`);
    },
    log(line) {
      stream.write(`${line}\n`);
    },
    stop() {},
  };
}

// 75_000 → "1m15s"; NaN (no rate yet) → "?".
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms)) return '?';
  const s = Math.round(ms / 1000);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m` : m > 0 ? `${m}m${String(sec).padStart(2, '0')}s` : `${sec}s`;
}
