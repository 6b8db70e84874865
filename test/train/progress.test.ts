// Progress off a terminal: plain lines every few steps or seconds, with loss, tokens/s and ETA.
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createProgress, formatDuration } from '../../src/train/progress.ts';

function capture(): { stream: PassThrough; text: () => string } {
  const stream = new PassThrough();
  let out = '';
  stream.on('data', (d: Buffer) => { out += d.toString(); });
  return { stream, text: () => out };
}

describe('progress without a TTY', () => {
  it('prints a line every everySteps steps, at the end, and on eval, with an ETA from the rate so far', () => {
    const { stream, text } = capture();
    let t = 0;
    const p = createProgress({ total: 10, stream, everySteps: 4, everyMs: 1e9, now: () => t });
    for (let step = 1; step <= 10; step++) {
      t = step * 1000; // one second per step
      p.update({ step, loss: 3 / step, lr: 1e-4, tokensPerS: 1234.4, ...(step === 5 ? { evalLoss: 0.75 } : {}) });
    }
    p.log('saved checkpoint-10');
    p.stop();
    expect(text().split('\n')).toEqual([
      'step 4/10 loss 0.7500 lr 1.00e-4 1234 tok/s eta 6s',
      'step 5/10 loss 0.6000 eval_loss 0.7500 lr 1.00e-4 1234 tok/s eta 5s',
      'step 9/10 loss 0.3333 lr 1.00e-4 1234 tok/s eta 1s',
      'step 10/10 loss 0.3000 lr 1.00e-4 1234 tok/s eta 0s',
      'saved checkpoint-10',
      '',
    ]);
  });

  it('prints when everyMs has passed even between step marks, and counts the ETA from a resumed step', () => {
    const { stream, text } = capture();
    let t = 0;
    const p = createProgress({ total: 100, startStep: 50, stream, everySteps: 1000, everyMs: 30_000, now: () => t });
    t = 10_000;
    p.update({ step: 51, loss: 1, lr: 0, tokensPerS: 10 });
    t = 40_000;
    p.update({ step: 54, loss: 1, lr: 0, tokensPerS: 10 });
    expect(text()).toBe('step 54/100 loss 1.0000 lr 0.00e+0 10 tok/s eta 7m40s\n');
  });

  it('formats durations', () => {
    expect([formatDuration(NaN), formatDuration(999), formatDuration(75_000), formatDuration(3_600_000 * 2 + 60_000 * 5)]).toEqual(['?', '1s', '1m15s', '2h05m']);
  });
});
