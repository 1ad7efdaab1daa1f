// Message fault injection (DESIGN §8, proto/bus/v1/faults.proto): the rules a
// process applies to the NATS messages it sends and receives, and the
// handler of its control subject iommu.v1.ctl.<process>.faults. Bus (bus.ts)
// asks decide() at each of its four send/receive points and carries out the
// returned effect; this file owns matching, counting and randomness, and
// never touches the connection.
//
// Semantics, per message (in rule order):
//   1. the rule matches: its subject pattern matches the message's subject
//      (or, with `replies`, the subject of the request a reply answers),
//      and its direction filter lets the message's direction through;
//   2. the first `skip` matching messages pass untouched;
//   3. a rule with `count` applies at most `count` times;
//   4. with `probability`, it applies with that chance (seeded generator);
//   5. applying it: DROP ends the evaluation (later rules do not see the
//      message); DELAY adds delay_ms; DUPLICATE sends/delivers one more
//      copy; CORRUPT flips one bit of the payload (an empty payload has no
//      bit to flip: the rule does not apply and is not counted).
// `hits` counts the times a rule applied: messages dropped, delayed,
// duplicated or corrupted by that rule.
//
// The control subject itself (iommu.v1.ctl.*.faults, requests and replies)
// is never subject to rules, so a `>` DROP rule can always be cleared.

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  type FaultControlReplySchema,
  type FaultControlRequest,
  FaultAction,
  FaultDirection,
  type FaultRule,
  FaultRuleSchema,
} from "@iommufd/proto/bus";
import { check, ErrnoError } from "../errno.js";

/** Which way a message is going, as seen by this process. */
export type Direction = "in" | "out";

/** What the Bus must do with one message. */
export interface FaultEffect {
  drop: boolean;
  /** Total delay before sending / delivering. */
  delayMs: number;
  /** Extra copies to send / deliver. */
  duplicates: number;
  /** Bits to flip (bit index within the payload, taken modulo its size). */
  flips: number[];
  /** Ids of the rules that applied (for logs). */
  rules: string[];
}

interface RuleState {
  rule: FaultRule;
  tokens: string[];
  matched: number;
  hits: bigint;
  rand: () => number;
}

/** The subject of the fault-control requests; exempt from every rule. */
const CONTROL = /^iommu\.v1\.ctl\.[^.]+\.faults$/;

/** A NATS subject pattern: dot-separated non-empty tokens without spaces; `>` only last. */
export function validSubjectPattern(pattern: string): boolean {
  if (pattern === "" || /\s/.test(pattern)) return false;
  const tokens = pattern.split(".");
  return tokens.every((t, i) => t !== "" && (t === ">" ? i === tokens.length - 1 : !t.includes(">")) && (t === "*" || !t.includes("*")));
}

/** Does `subject` match a pattern with NATS wildcards (`*` one token, `>` one or more trailing tokens)? */
export function subjectMatches(patternTokens: readonly string[], subject: string): boolean {
  const s = subject.split(".");
  for (let i = 0; i < patternTokens.length; i++) {
    const p = patternTokens[i];
    if (p === ">") return s.length > i;
    if (i >= s.length) return false;
    if (p !== "*" && p !== s[i]) return false;
  }
  return s.length === patternTokens.length;
}

/** mulberry32: small, fast, good enough for fault dice; seeded for reproducible tests. */
function generator(seed: bigint): () => number {
  let a = seed === 0n ? (Math.random() * 2 ** 32) >>> 0 : Number(seed & 0xffff_ffffn) ^ Number((seed >> 32n) & 0xffff_ffffn);
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** Check one rule as the proto's error contract says (EINVAL, nothing changed). */
function validateRule(r: FaultRule): void {
  check(validSubjectPattern(r.subject), "EINVAL", `rule ${r.id || "(new)"}: bad subject pattern "${r.subject}"`);
  check(r.action !== FaultAction.UNSPECIFIED && FaultAction[r.action] !== undefined, "EINVAL", `rule ${r.id || "(new)"}: no action`);
  check(r.action !== FaultAction.DELAY || r.delayMs > 0, "EINVAL", `rule ${r.id || "(new)"}: DELAY needs delay_ms`);
  check(
    r.probability === undefined || (r.probability > 0 && r.probability <= 1),
    "EINVAL",
    `rule ${r.id || "(new)"}: probability ${r.probability} outside (0, 1]`,
  );
  check(FaultDirection[r.direction] !== undefined, "EINVAL", `rule ${r.id || "(new)"}: bad direction ${r.direction}`);
}

function flipBits(data: Uint8Array, flips: readonly number[]): Uint8Array {
  if (flips.length === 0 || data.length === 0) return data;
  const out = Uint8Array.from(data);
  for (const f of flips) {
    const bit = f % (out.length * 8);
    out[bit >> 3] ^= 1 << (bit & 7);
  }
  return out;
}

export class FaultInjector {
  private rules: RuleState[] = [];
  private nextId = 1;

  /** True when no rule is in force: the Bus's fast path. */
  get empty(): boolean {
    return this.rules.length === 0;
  }

  /**
   * The effect of the rules on one message, or undefined when none applies.
   * `subject` is the message's subject; for a reply (`reply` true) it is
   * the subject of the request it answers, and only rules with `replies`
   * match. `payloadBytes` is the payload size (for CORRUPT).
   */
  decide(subject: string, dir: Direction, reply: boolean, payloadBytes: number): FaultEffect | undefined {
    if (this.rules.length === 0 || CONTROL.test(subject)) return undefined;
    let eff: FaultEffect | undefined;
    for (const st of this.rules) {
      const r = st.rule;
      if (reply && !r.replies) continue;
      if (r.direction === FaultDirection.INBOUND && dir !== "in") continue;
      if (r.direction === FaultDirection.OUTBOUND && dir !== "out") continue;
      if (!subjectMatches(st.tokens, subject)) continue;
      st.matched++;
      if (st.matched <= r.skip) continue;
      if (r.count > 0 && st.hits >= BigInt(r.count)) continue;
      if (r.probability !== undefined && r.probability < 1 && st.rand() >= r.probability) continue;
      if (r.action === FaultAction.CORRUPT && payloadBytes === 0) continue;
      st.hits++;
      eff ??= { drop: false, delayMs: 0, duplicates: 0, flips: [], rules: [] };
      eff.rules.push(r.id);
      switch (r.action) {
        case FaultAction.DROP:
          eff.drop = true;
          return eff;
        case FaultAction.DELAY:
          eff.delayMs += r.delayMs;
          break;
        case FaultAction.DUPLICATE:
          eff.duplicates++;
          break;
        case FaultAction.CORRUPT:
          eff.flips.push(Math.floor(st.rand() * payloadBytes * 8));
          break;
      }
    }
    return eff;
  }

  /** Add or replace rules (all validated first: one bad rule changes nothing). */
  set(req: { rules: readonly MessageInitShape<typeof FaultRuleSchema>[]; replaceAll?: boolean }): FaultRule[] {
    const rules = req.rules.map((r) => create(FaultRuleSchema, r));
    for (const r of rules) validateRule(r);
    if (req.replaceAll) this.rules = [];
    for (const r of rules) {
      const rule = create(FaultRuleSchema, { ...r, id: r.id || `rule-${this.nextId++}`, hits: 0n });
      const st: RuleState = { rule, tokens: rule.subject.split("."), matched: 0, hits: 0n, rand: generator(rule.seed) };
      const at = this.rules.findIndex((x) => x.rule.id === rule.id);
      if (at >= 0) this.rules[at] = st;
      else this.rules.push(st);
    }
    return this.list();
  }

  /** The rules in force with their hit counts. */
  list(): FaultRule[] {
    return this.rules.map((st) => create(FaultRuleSchema, { ...st.rule, hits: st.hits }));
  }

  /** Remove the given rules (all when `ids` is empty); returns how many went. */
  clear(ids: readonly string[]): number {
    const before = this.rules.length;
    this.rules = ids.length === 0 ? [] : this.rules.filter((st) => !ids.includes(st.rule.id));
    return before - this.rules.length;
  }

  /** Serve one FaultControlRequest (the body of the control-subject handler). */
  handle(req: FaultControlRequest, processName: string): MessageInitShape<typeof FaultControlReplySchema> {
    const base = { seq: req.seq, process: processName };
    switch (req.request.case) {
      case "set":
        return { ...base, reply: { case: "set", value: { rules: this.set(req.request.value) } } };
      case "list":
        return { ...base, reply: { case: "list", value: { rules: this.list() } } };
      case "clear": {
        const cleared = this.clear(req.request.value.ids);
        return { ...base, reply: { case: "clear", value: { cleared, rules: this.list() } } };
      }
      default:
        throw new ErrnoError("EINVAL", "fault control request without an operation");
    }
  }
}

/** Apply CORRUPT flips to a payload (a copy; the input is never changed). */
export function applyFlips(data: Uint8Array, eff: FaultEffect | undefined): Uint8Array {
  return eff ? flipBits(data, eff.flips) : data;
}
