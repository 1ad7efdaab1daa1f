// Batching and pipelining for request/reply on the bus (DESIGN §6: one
// round trip ≈ 0.5 ms, so nothing per access may need one). Items pushed in
// the same turn of the event loop leave together in one request; a batch
// leaves at once when it is full (maxItems or maxBytes); at most maxInFlight
// requests are outstanding, and while the window is full items keep
// accumulating, so batches grow with the load. Order is kept: items leave in
// the order pushed, and batches are sent in that order.

export interface BatcherOptions<I, R> {
  /** Items per request (≥ 1). */
  maxItems: number;
  /** Payload bytes per request (a single bigger item still goes alone). */
  maxBytes: number;
  /** Requests outstanding at once (≥ 1). */
  maxInFlight: number;
  /** Payload bytes of one item. */
  sizeOf(item: I): number;
  /** Send one batch; resolves with one result per item, in order. A rejection fails every item of the batch. */
  send(items: I[]): Promise<R[]>;
}

interface Pending<I, R> {
  item: I;
  resolve(r: R): void;
  reject(e: unknown): void;
}

export interface BatcherStats {
  batches: number;
  items: number;
  /** Largest number of requests seen outstanding at once. */
  peakInFlight: number;
}

export class Batcher<I, R> {
  private pending: Pending<I, R>[] = [];
  private pendingBytes = 0;
  private inFlight = 0;
  private scheduled = false;
  private idleWaiters: (() => void)[] = [];
  readonly stats: BatcherStats = { batches: 0, items: 0, peakInFlight: 0 };

  constructor(private readonly opts: BatcherOptions<I, R>) {
    this.configure(opts);
  }

  /** Change the limits (e.g. once the host has granted max_batch). */
  configure(limits: Partial<Pick<BatcherOptions<I, R>, "maxItems" | "maxBytes" | "maxInFlight">>): void {
    if (limits.maxItems !== undefined) this.opts.maxItems = Math.max(1, Math.floor(limits.maxItems));
    if (limits.maxBytes !== undefined) this.opts.maxBytes = Math.max(1, Math.floor(limits.maxBytes));
    if (limits.maxInFlight !== undefined) this.opts.maxInFlight = Math.max(1, Math.floor(limits.maxInFlight));
  }

  get limits(): { maxItems: number; maxBytes: number; maxInFlight: number } {
    return { maxItems: this.opts.maxItems, maxBytes: this.opts.maxBytes, maxInFlight: this.opts.maxInFlight };
  }

  /** Requests outstanding now. */
  get outstanding(): number {
    return this.inFlight;
  }

  /** Items not yet sent. */
  get queued(): number {
    return this.pending.length;
  }

  push(item: I): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      this.pending.push({ item, resolve, reject });
      this.pendingBytes += this.opts.sizeOf(item);
      if (this.pending.length >= this.opts.maxItems || this.pendingBytes >= this.opts.maxBytes) this.flush();
      else this.schedule();
    });
  }

  /** Resolves when nothing is queued or outstanding. */
  idle(): Promise<void> {
    if (this.pending.length === 0 && this.inFlight === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      this.flush();
    });
  }

  private take(): Pending<I, R>[] {
    let n = 0;
    let bytes = 0;
    while (n < this.pending.length && n < this.opts.maxItems) {
      const b = this.opts.sizeOf(this.pending[n].item);
      if (n > 0 && bytes + b > this.opts.maxBytes) break;
      bytes += b;
      n++;
    }
    this.pendingBytes -= bytes;
    return this.pending.splice(0, n);
  }

  private flush(): void {
    while (this.pending.length > 0 && this.inFlight < this.opts.maxInFlight) {
      const batch = this.take();
      this.inFlight++;
      this.stats.batches++;
      this.stats.items += batch.length;
      if (this.inFlight > this.stats.peakInFlight) this.stats.peakInFlight = this.inFlight;
      let sent: Promise<R[]>;
      try {
        sent = this.opts.send(batch.map((p) => p.item));
      } catch (e) {
        sent = Promise.reject(e);
      }
      sent.then(
        (results) => {
          for (let i = 0; i < batch.length; i++) {
            if (i < results.length) batch[i].resolve(results[i]);
            else batch[i].reject(new Error(`batch reply has ${results.length} results for ${batch.length} items`));
          }
        },
        (e: unknown) => {
          for (const p of batch) p.reject(e);
        },
      ).finally(() => {
        this.inFlight--;
        this.flush();
        if (this.pending.length === 0 && this.inFlight === 0) {
          const w = this.idleWaiters;
          this.idleWaiters = [];
          for (const r of w) r();
        }
      });
    }
  }
}
