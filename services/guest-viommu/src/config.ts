// guest-viommu's flags (on top of the kit's common ones), with environment
// fallbacks, validated with zod: a bad value stops the process with a
// message naming the flag (exit code 2).
import { type Command, Option } from "commander";
import { z } from "zod";
import type { VmmDeviceSpec } from "./vmm/vmm.js";

const SIZE = /^(0x[0-9a-f]+|\d+)\s*([kmgt]i?b?)?$/i;
const MiB = 1n << 20n;

/** "64M", "1G", "0x4000000", "67108864" → bytes. */
export function parseSize(s: string): bigint | undefined {
  const m = SIZE.exec(s.trim());
  if (!m) return undefined;
  const n = BigInt(m[1] as string);
  const unit = (m[2] ?? "").toLowerCase()[0];
  const shift = unit === "k" ? 10n : unit === "m" ? 20n : unit === "g" ? 30n : unit === "t" ? 40n : 0n;
  return n << shift;
}

const num = (s: string) => (/^0x[0-9a-f]+$/i.test(s) ? Number.parseInt(s, 16) : /^\d+$/.test(s) ? Number(s) : Number.NaN);

/** "name=nic0,vid=0x10[,devsim=127.0.0.1:50053]" or "rid=0x18,vid=..." → a device spec, or the problem. */
export function parseDeviceSpec(s: string): VmmDeviceSpec | string {
  const out: { name?: string; rid?: number; vid?: number; devsim?: string } = {};
  for (const part of s.split(",")) {
    const eq = part.indexOf("=");
    if (eq <= 0) return `"${part}" is not key=value`;
    const k = part.slice(0, eq).trim();
    const v = part.slice(eq + 1).trim();
    if (k === "name") out.name = v;
    else if (k === "rid") out.rid = num(v);
    else if (k === "vid") out.vid = num(v);
    else if (k === "devsim") out.devsim = v;
    else return `unknown key "${k}" (name, rid, vid, devsim)`;
  }
  if (out.name === undefined && out.rid === undefined) return "name=<host device name> (or rid=<host RID>) is required";
  if (out.name === "") return "empty name";
  if (out.rid !== undefined && !(out.rid >= 0 && out.rid <= 0xffff)) return "rid must be 0..0xffff";
  if (out.vid === undefined || !(out.vid >= 0 && out.vid <= 0xffff)) return "vid=<virtual ID 0..0xffff> is required";
  if (out.devsim !== undefined && !/^[^\s:]+:\d+$/.test(out.devsim)) return "devsim must be host:port";
  return out as VmmDeviceSpec;
}

export const guestSchema = z.object({
  vendor: z.enum(["smmuv3", "vtd"]),
  memory: z.string().transform((s, ctx) => {
    const b = parseSize(s);
    if (b === undefined || b < 16n * MiB || b > 1n << 40n || b % 4096n !== 0n) {
      ctx.addIssue({ code: "custom", message: "a size from 16M to 1T, a multiple of 4 KiB (e.g. 64M, 1G, 0x4000000)" });
      return z.NEVER;
    }
    return b;
  }),
  host: z.string().regex(/^[^\s:]+:\d+$/, "host:port of host-iommufd's gRPC server"),
  device: z.array(z.string()).transform((list, ctx) => {
    const out: VmmDeviceSpec[] = [];
    for (const s of list) {
      const d = parseDeviceSpec(s);
      if (typeof d === "string") {
        ctx.addIssue({ code: "custom", message: `"${s}": ${d}` });
        return z.NEVER;
      }
      if (out.some((x) => x.vid === d.vid)) {
        ctx.addIssue({ code: "custom", message: `"${s}": vid ${d.vid} used twice` });
        return z.NEVER;
      }
      out.push(d);
    }
    return out;
  }),
  leaseMs: z.coerce.number().int().min(0).max(3_600_000),
});

export type GuestConfig = z.infer<typeof guestSchema>;

export function guestOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option("--vendor <vendor>", "virtual IOMMU the guest sees: smmuv3 (virtual Arm SMMUv3) or vtd (virtual Intel VT-d)").env("GUEST_VENDOR").default("smmuv3"))
    .addOption(new Option("--memory <bytes>", "guest RAM size (suffixes K/M/G/T), a memfd in the host session mapped at IOVA = GPA").env("GUEST_MEMORY").default("64M"))
    .addOption(new Option("--host <address>", "gRPC address of host-iommufd (iommufd.v1.Iommufd and Admin)").env("IOMMUFD_HOST").default("127.0.0.1:50051"))
    .addOption(
      new Option("--device <spec>", "assign a host device (repeatable): name=<host device name>,vid=<virtual SID/RID>[,devsim=<device-sim gRPC address>]; rid=<host RID> instead of name")
        .env("GUEST_DEVICES")
        .argParser((v: string, prev: string[] | undefined) => [...(prev ?? []), ...v.split(";").filter((x) => x.trim() !== "")])
        .default([] as string[]),
    )
    .addOption(new Option("--lease-ms <ms>", "iommufd session lease to ask for (0 = the host's default)").env("GUEST_LEASE_MS").default("0"))
    .addHelpText(
      "after",
      `
Examples:
  guest-viommu --vendor smmuv3 --memory 256M --host 127.0.0.1:50051 \\
      --device name=nic0,vid=0x10,devsim=127.0.0.1:50053
  guest-viommu --vendor vtd --device rid=0x18,vid=0x0300
GUEST_DEVICES holds several specs separated by ';'.`,
    );
}
