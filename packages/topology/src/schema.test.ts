// The topology description: a good file, the embedded default, each kind of
// error reported at its YAML path (and line), and the mapping to processes
// and their flags.
import { describe, expect, it } from "vitest";
import { DEFAULT_TOPOLOGY_YAML } from "./default.js";
import { loadTopology, parseTopology, TopologyError, yamlPath } from "./load.js";
import { formatEndpointFlag, mappedFlags, type PlanContext, planProcesses, processArgs } from "./plan.js";
import { formatRid, parseRid, parseSize } from "./schema.js";

const GOOD = `
version: 1
name: lab
nats: { url: nats://10.0.0.1:4222 }
host:
  name: h
  grpc_port: 6000
  log_level: debug
  iommus: [{ id: smmu0, vendor: smmuv3 }, { id: smmu1, vendor: smmuv3 }]
  args: [--some-flag, "1"]
  env: { FOO: bar }
devices:
  - name: d0
    endpoints:
      - { name: a, rid: 0x18, iommu: smmu0 }
      - { name: b, rid: "01:00.1", iommu: smmu1, max_pasid_log2: 20, ats: { atc_entries: 8 }, pri: { outstanding_capacity: 4 } }
guests:
  - { name: g0, vendor: smmuv3, memory: 256MiB, devices: [d0/a, d0/b] }
`;

/** The problems of a description as "path: message" (no line numbers). */
function problems(yaml: string): string[] {
  try {
    parseTopology(yaml, "t.yaml");
  } catch (e) {
    expect(e).toBeInstanceOf(TopologyError);
    return (e as TopologyError).problems.map((p) => `${p.path}: ${p.message}`);
  }
  return [];
}

const base = (extra: string) => `
host:
  iommus: [{ id: smmu0, vendor: smmuv3 }, { id: dmar0, vendor: vtd }]
devices:
  - name: dev
    endpoints:
      - { name: e0, rid: "00:03.0", iommu: smmu0 }
      - { name: e1, rid: "00:04.0", iommu: dmar0 }
${extra}`;

describe("topology description", () => {
  it("reads a good file into the normalized shape", () => {
    const t = parseTopology(GOOD);
    expect(t.name).toBe("lab");
    expect(t.nats).toEqual({ url: "nats://10.0.0.1:4222" });
    expect(t.host).toMatchObject({ name: "h", grpcPort: 6000, logLevel: "debug", args: ["--some-flag", "1"], env: { FOO: "bar" } });
    expect(t.devices[0]?.endpoints).toEqual([
      { name: "a", hostName: "d0/a", rid: 0x18, iommu: "smmu0", maxPasidLog2: 0 },
      { name: "b", hostName: "d0/b", rid: 0x101, iommu: "smmu1", maxPasidLog2: 20, atcEntries: 8, priCredits: 4 },
    ]);
    expect(t.guests[0]).toMatchObject({ name: "g0", vendor: "smmuv3", memoryBytes: 256n << 20n, devices: ["d0/a", "d0/b"] });
    // Ports not given are filled in from 50051 up, skipping the taken ones.
    expect(t.devices[0]?.grpcPort).toBe(50051);
    expect(t.guests[0]?.grpcPort).toBe(50052);
  });

  it("has an embedded default: host with smmu0 + dmar0, one device-sim with an endpoint behind each, one guest per vendor", () => {
    const t = loadTopology();
    expect(t.host.iommus).toEqual([
      { id: "smmu0", vendor: "smmuv3" },
      { id: "dmar0", vendor: "vtd" },
    ]);
    expect(t.devices).toHaveLength(1);
    expect(t.devices[0]?.endpoints.map((e) => [e.hostName, e.iommu])).toEqual([
      ["devsim0/nic0", "smmu0"],
      ["devsim0/nvme0", "dmar0"],
    ]);
    expect(t.guests.map((g) => [g.name, g.vendor, g.devices])).toEqual([
      ["vm-smmu", "smmuv3", ["devsim0/nic0"]],
      ["vm-vtd", "vtd", ["devsim0/nvme0"]],
    ]);
    expect(parseTopology(DEFAULT_TOPOLOGY_YAML)).toEqual(t);
  });

  it("reports a bad enum, a bad value and a missing field at their paths, with the line", () => {
    const yaml = base(`guests:
  - { name: vm0, vendor: smmuv3, memory: 1GiB }
  - { name: vm1, vendor: amd, memory: 1GiB }
  - { vendor: vtd, memory: 1000 }`);
    try {
      parseTopology(yaml, "t.yaml");
      expect.unreachable();
    } catch (e) {
      const err = e as TopologyError;
      expect(err.problems).toContainEqual({ path: "guests[1].vendor", message: 'expected "smmuv3" | "vtd", got "amd"', line: 11 });
      expect(err.message).toContain('guests[1].vendor (line 11): expected "smmuv3" | "vtd", got "amd"');
      expect(err.problems.map((p) => `${p.path}: ${p.message}`)).toEqual(
        expect.arrayContaining([
          "guests[2].name: expected string, got nothing (required)",
          'guests[2].memory: expected a size that is a non-zero multiple of 4 KiB ("1GiB", "512MiB"), got 1000',
        ]),
      );
    }
  });

  it("reports unknown keys, bad types and bad requester IDs", () => {
    expect(problems(base("colour: blue"))).toEqual(['colour: unknown key "colour"']);
    expect(problems(`host: { iommus: [{ id: smmu0, vendor: smmuv3, irq: 5 }], grpc_port: "x" }`)).toEqual([
      'host.iommus[0].irq: unknown key "irq"',
      'host.grpc_port: expected number, got "x"',
    ]);
    expect(problems(`host: { iommus: [{ id: s, vendor: smmuv3 }] }\ndevices: [{ name: d, endpoints: [{ name: e, rid: "00:20.0", iommu: s }] }]`)).toEqual([
      'devices[0].endpoints[0].rid: expected a requester ID "bb:dd.f" or a number 0..0xffff, got "00:20.0"',
    ]);
    expect(problems("host: {}")).toEqual(["host.iommus: expected array, got nothing (required)"]);
    expect(problems("host: { iommus: [] }")).toEqual(["host.iommus: expected at least one IOMMU instance"]);
  });

  it("checks cross references: IOMMU ids, endpoint names, RIDs, assignments, vendors, names, ports", () => {
    expect(
      problems(`
host: { iommus: [{ id: smmu0, vendor: smmuv3 }, { id: smmu0, vendor: vtd }], grpc_port: 7000 }
devices:
  - name: dev
    grpc_port: 7000
    endpoints:
      - { name: e0, rid: "00:03.0", iommu: smmu0, pri: { outstanding_capacity: 8 } }
      - { name: e0, rid: "00:03.0", iommu: dmar9 }
guests:
  - { name: dev, vendor: vtd, memory: 1GiB, devices: [dev/e0, dev/zz] }
  - { name: vm2, vendor: smmuv3, memory: 1GiB, devices: [dev/e0] }
`),
    ).toEqual([
      'guests[0].name: duplicate process name "dev"',
      'host.iommus[1].id: duplicate IOMMU id "smmu0"',
      "devices[0].endpoints[0].pri: PRI needs ATS (give ats.atc_entries)",
      'devices[0].endpoints[1].name: duplicate endpoint name "e0" in dev',
      'devices[0].endpoints[1].iommu: no IOMMU "dmar9" on the host (have: smmu0)',
      "devices[0].endpoints[1].rid: requester ID 00:03.0 is already used by dev/e0",
      'guests[0].devices[1]: no endpoint "dev/zz" (have: dev/e0; write "<device-sim>/<endpoint>")',
      "guests[1].devices[0]: dev/e0 is already assigned to dev",
      "devices[0].grpc_port: port 7000 is already used by host.grpc_port",
    ]);
    expect(problems(base("guests: [{ name: vm, vendor: vtd, memory: 1GiB, devices: [dev/e0] }]"))).toEqual([
      "guests[0].devices[0]: dev/e0 is behind smmu0 (smmuv3), but vm is a vtd guest: nesting needs the same IOMMU architecture",
    ]);
    expect(problems(base("guests: [{ name: nats, vendor: vtd, memory: 1GiB }]"))).toEqual(['guests[0].name: "nats" is the NATS server\'s name']);
  });

  it("reports YAML syntax errors with their line", () => {
    try {
      parseTopology("host:\n  iommus: [\n", "bad.yaml");
      expect.unreachable();
    } catch (e) {
      const p = (e as TopologyError).problems[0];
      expect(p?.path).toBe("");
      expect(p?.line).toBeGreaterThan(0);
    }
  });

  it("spells requester IDs, sizes and YAML paths", () => {
    expect(parseRid("00:03.0")).toBe(0x18);
    expect(parseRid("0x0101")).toBe(0x101);
    expect(parseRid("00:03.8")).toBeUndefined();
    expect(formatRid(0x18)).toBe("00:03.0");
    expect(parseSize("1GiB")).toBe(1n << 30n);
    expect(parseSize("4096")).toBe(4096n);
    expect(parseSize("1 furlong")).toBeUndefined();
    expect(yamlPath(["guests", 1, "devices", 0])).toBe("guests[1].devices[0]");
  });
});

describe("processes and flags", () => {
  const t = loadTopology();
  const ctx: PlanContext = {
    natsUrl: "nats://n:4222",
    grpcHost: "0.0.0.0",
    grpcPort: (n) => (n === "host" ? 50051 : 0),
    grpcAddress: (n) => `${n}:50051`,
  };

  it("orders host, device-sims, guests, each depending on what it needs", () => {
    expect(planProcesses(t).map((p) => [p.name, p.kind, p.dependsOn])).toEqual([
      ["host", "host-iommufd", []],
      ["devsim0", "device-sim", ["host"]],
      ["vm-smmu", "guest-viommu", ["host", "devsim0"]],
      ["vm-vtd", "guest-viommu", ["host", "devsim0"]],
    ]);
  });

  it("maps the structured fields to the documented flags, then the description's args", () => {
    const [host, dev, guest] = planProcesses(t);
    expect(mappedFlags(host!, ctx, t)).toEqual([
      ["--name", "host"],
      ["--nats-url", "nats://n:4222"],
      ["--grpc-host", "0.0.0.0"],
      ["--grpc-port", "50051"],
      ["--log-level", "info"],
      ["--iommu", "smmu0=smmuv3"],
      ["--iommu", "dmar0=vtd"],
    ]);
    expect(mappedFlags(dev!, ctx, t).slice(5)).toEqual([
      ["--endpoint", "name=nic0,rid=00:03.0,iommu=smmu0,pasid=8,ats=1,atc=64,pri=1,prq=32"],
      ["--endpoint", "name=nvme0,rid=00:04.0,iommu=dmar0,pasid=8,ats=1,atc=32,pri=1,prq=16"],
    ]);
    expect(mappedFlags(guest!, ctx, t).slice(5)).toEqual([
      ["--vendor", "smmuv3"],
      ["--memory", String(1n << 30n)],
      ["--host", "host:50051"],
      ["--device", "name=devsim0/nic0,vid=0x18,devsim=devsim0:50051"],
    ]);
    const lab = parseTopology(GOOD);
    const { args, skipped } = processArgs(planProcesses(lab)[0]!, ctx, lab, (f) => f !== "--iommu");
    expect(skipped).toEqual(["--iommu"]);
    expect(args.slice(-2)).toEqual(["--some-flag", "1"]);
    expect(args).toContain("debug");
    expect(formatEndpointFlag({ name: "a", rid: 0x18, iommu: "s", maxPasidLog2: 0 })).toBe("name=a,rid=00:03.0,iommu=s,pasid=0");
  });
});
