// The tool side of iommu.v1.ctl.<process>.faults: set, list and clear a
// process's message fault rules (faults.ts holds their semantics).
import type { MessageInitShape } from "@bufbuild/protobuf";
import { type FaultControlReply, FaultControlReplySchema, FaultControlRequestSchema, type FaultRule, type FaultRuleSchema } from "@iommufd/proto/bus";
import { subjects } from "../subjects.js";
import type { Bus } from "./bus.js";

export type FaultRuleInit = MessageInitShape<typeof FaultRuleSchema>;

let seq = 0n;

/** One request on the process's control subject; errors (EINVAL, ENOTCONN, ETIMEDOUT) reject with ErrnoError. */
export function faultControl(
  bus: Bus,
  processName: string,
  request: MessageInitShape<typeof FaultControlRequestSchema>["request"],
  timeoutMs = 2_000,
): Promise<FaultControlReply> {
  return bus.request(subjects.faults(processName), FaultControlRequestSchema, { seq: ++seq, request }, FaultControlReplySchema, { timeoutMs });
}

/** Add or replace rules (`replaceAll` clears the others first); resolves to every rule in force. */
export async function setFaultRules(bus: Bus, processName: string, rules: FaultRuleInit[], replaceAll = false): Promise<FaultRule[]> {
  const r = await faultControl(bus, processName, { case: "set", value: { rules, replaceAll } });
  return r.reply.case === "set" ? r.reply.value.rules : [];
}

/** The rules in force, with their hit counts. */
export async function listFaultRules(bus: Bus, processName: string): Promise<FaultRule[]> {
  const r = await faultControl(bus, processName, { case: "list", value: {} });
  return r.reply.case === "list" ? r.reply.value.rules : [];
}

/** Remove rules by id (all when none is given); resolves to the number removed. */
export async function clearFaultRules(bus: Bus, processName: string, ids: string[] = []): Promise<number> {
  const r = await faultControl(bus, processName, { case: "clear", value: { ids } });
  return r.reply.case === "clear" ? r.reply.value.cleared : 0;
}
