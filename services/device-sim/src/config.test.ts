import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Command } from "commander";
import { describe, expect, it } from "vitest";
import { allEndpoints, checkUnique, deviceSimOptions, deviceSimSchema, parseConfigFile, parseEndpointSpec, parseRid } from "./config.js";

describe("endpoint spec", () => {
  it("parses every key", () => {
    const e = parseEndpointSpec(
      "name=ep0,rid=0x0018,iommu=smmu0,pasid=20,pasid-exec=1,pasid-priv=yes,ats=1,atc=256,inv-depth=8,global-inv=on,pri=1,prq=32,batch=64,inflight=4",
    );
    expect(e).toEqual({
      name: "ep0",
      rid: 0x18,
      iommuId: "smmu0",
      maxPasidLog2: 20,
      pasidExec: true,
      pasidPriv: true,
      ats: true,
      atcEntries: 256,
      atsInvalidateQueueDepth: 8,
      atsGlobalInvalidate: true,
      pri: true,
      priOutstandingCapacity: 32,
      maxBatch: 64,
      inFlight: 4,
    });
  });

  it("fills defaults; a bare key means 1; the default name comes from the RID", () => {
    const e = parseEndpointSpec("rid=00:03.0,ats");
    expect(e).toMatchObject({ name: "ep0018", rid: 0x18, ats: true, atcEntries: 64, pri: false, maxBatch: 64, inFlight: 8, maxPasidLog2: 0 });
  });

  it("reads RIDs as 0x hex, bus:dev.fn or decimal", () => {
    expect(parseRid("0x0018")).toBe(0x18);
    expect(parseRid("00:03.0")).toBe(0x18);
    expect(parseRid("1f:1f.7")).toBe(0x1fff);
    expect(parseRid("24")).toBe(24);
    expect(() => parseRid("00:20.0")).toThrow(/above 31/);
    expect(() => parseRid("0x10000")).toThrow(/0..65535/);
  });

  it.each([
    ["ats=1", /rid is required/],
    ["rid=1,foo=2", /unknown key "foo"/],
    ["rid=1,rid=2", /rid given twice/],
    ["rid=1,pasid=21", /pasid: "21" is not an integer in 0..20/],
    ["rid=1,pri=1", /pri needs ats=1/],
    ["rid=1,atc=16", /atc needs ats=1/],
    ["rid=1,ats,prq=4", /prq needs pri=1/],
    ["rid=1,pasid-exec", /need a PASID capability/],
    ["rid=1,ats=maybe", /not a boolean/],
    ["rid=1,stu=12", /programmed by the host/],
    ["rid=1,name=a b", /name/],
    ["rid=1,batch=0", /batch/],
  ])("rejects %s", (spec, msg) => {
    expect(() => parseEndpointSpec(spec)).toThrow(msg);
  });
});

describe("config file", () => {
  it("reads the same keys from JSON with typed or string values", () => {
    const eps = parseConfigFile(JSON.stringify({ endpoints: [{ name: "a", rid: "00:04.0", ats: true, atc: 16 }, { rid: 0x28, pri: false }] }));
    expect(eps.map((e) => [e.name, e.rid, e.ats, e.atcEntries])).toEqual([
      ["a", 0x20, true, 16],
      ["ep0028", 0x28, false, 64],
    ]);
  });

  it("rejects bad files with the entry named", () => {
    expect(() => parseConfigFile("{")).toThrow(/not JSON/);
    expect(() => parseConfigFile("[]")).toThrow(/expected an object/);
    expect(() => parseConfigFile('{"endpoints":[{"rid":1}],"x":1}')).toThrow(/unknown top-level key/);
    expect(() => parseConfigFile('{"endpoints":[{"rid":1},{"rid":2,"pri":true}]}')).toThrow(/endpoints\[1\]: pri needs ats=1/);
    expect(() => parseConfigFile('{"endpoints":[{"rid":[1]}]}')).toThrow(/expected a string, number or boolean/);
  });

  it("requires unique names and RIDs across flags and file", () => {
    expect(() => checkUnique([parseEndpointSpec("rid=1,name=a"), parseEndpointSpec("rid=2,name=a")])).toThrow(/name "a" used twice/);
    expect(() => checkUnique([parseEndpointSpec("rid=1,name=a"), parseEndpointSpec("rid=0x1,name=b")])).toThrow(/rid 0x0001 used twice/);
  });
});

describe("process flags", () => {
  const parse = (argv: string[], env: Record<string, string> = {}) => {
    const saved = { ...process.env };
    Object.assign(process.env, env);
    try {
      const cmd = deviceSimOptions(new Command("device-sim")).exitOverride();
      cmd.parse(argv, { from: "user" });
      return deviceSimSchema.safeParse(cmd.opts());
    } finally {
      process.env = saved;
    }
  };

  it("collects repeatable --endpoint flags and the config file, in that order", () => {
    const dir = mkdtempSync(join(tmpdir(), "devsim-cfg-"));
    const file = join(dir, "c.json");
    writeFileSync(file, JSON.stringify({ endpoints: [{ rid: "0x30" }] }));
    const r = parse(["--endpoint", "rid=0x10", "--endpoint", "rid=0x20,ats", "--config", file]);
    expect(r.success).toBe(true);
    if (!r.success) return;
    expect(allEndpoints(r.data).map((e) => e.rid)).toEqual([0x10, 0x20, 0x30]);
    expect(r.data.unregister).toBe(true);
    expect(r.data.requestTimeoutMs).toBe(5000);
  });

  it("takes DEVSIM_ENDPOINTS as specs separated by ';'", () => {
    const r = parse([], { DEVSIM_ENDPOINTS: "rid=0x10;rid=0x11,ats" });
    expect(r.success && r.data.endpoint.map((e) => e.rid)).toEqual([0x10, 0x11]);
  });

  it("reports a bad spec as an issue on --endpoint", () => {
    const r = parse(["--endpoint", "rid=0x10,pri"]);
    expect(r.success).toBe(false);
    if (r.success) return;
    expect(r.error.issues[0].path[0]).toBe("endpoint");
    expect(r.error.issues[0].message).toMatch(/pri needs ats=1/);
  });

  it("reports an unreadable config file", () => {
    const r = parse(["--config", "/nonexistent/devsim.json"]);
    expect(r.success).toBe(false);
    if (!r.success) expect(r.error.issues[0].message).toMatch(/nonexistent/);
  });

  it("turns unregistering off with --no-unregister", () => {
    const r = parse(["--no-unregister"]);
    expect(r.success && r.data.unregister).toBe(false);
  });
});
