import { describe, expect, it } from "vitest";
import { guestSchema, parseDeviceSpec, parseSize } from "./config.js";

describe("guest-viommu flags", () => {
  it("parses sizes with suffixes and hex", () => {
    expect(parseSize("64M")).toBe(64n << 20n);
    expect(parseSize("1G")).toBe(1n << 30n);
    expect(parseSize("2GiB")).toBe(2n << 30n);
    expect(parseSize("0x4000000")).toBe(0x400_0000n);
    expect(parseSize("4096")).toBe(4096n);
    expect(parseSize("lots")).toBeUndefined();
  });

  it("parses device specs and names what is wrong", () => {
    expect(parseDeviceSpec("name=nic0,vid=0x10,devsim=127.0.0.1:50053")).toEqual({ name: "nic0", vid: 0x10, devsim: "127.0.0.1:50053" });
    expect(parseDeviceSpec("rid=0x18,vid=768")).toEqual({ rid: 0x18, vid: 768 });
    expect(parseDeviceSpec("vid=1")).toMatch(/name=/);
    expect(parseDeviceSpec("name=a")).toMatch(/vid=/);
    expect(parseDeviceSpec("name=a,vid=0x10000")).toMatch(/vid=/);
    expect(parseDeviceSpec("name=a,vid=1,colour=blue")).toMatch(/unknown key/);
    expect(parseDeviceSpec("name=a,vid=1,devsim=nowhere")).toMatch(/host:port/);
  });

  it("validates the whole configuration with zod", () => {
    const ok = guestSchema.safeParse({ vendor: "vtd", memory: "128M", host: "127.0.0.1:50051", device: ["name=a,vid=1", "name=b,vid=2"], leaseMs: "0" });
    expect(ok.success).toBe(true);
    if (ok.success) {
      expect(ok.data.memory).toBe(128n << 20n);
      expect(ok.data.device).toHaveLength(2);
    }
    const bad = guestSchema.safeParse({ vendor: "amd", memory: "1K", host: "nohost", device: ["name=a,vid=1", "name=b,vid=1"], leaseMs: "-1" });
    expect(bad.success).toBe(false);
    if (!bad.success) expect(new Set(bad.error.issues.map((i) => i.path[0]))).toEqual(new Set(["vendor", "memory", "host", "device", "leaseMs"]));
  });
});
