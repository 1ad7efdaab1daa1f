// host-iommufd process entry: the host kernel. Builds the physical IOMMU
// instances (--iommu id=vendor, repeatable) with their host drivers, serves
// iommufd.v1.Iommufd (the uAPI, one dispatch table) and iommufd.v1.Admin
// over gRPC, and the device / guest-memory data plane on NATS.
import { bind, runService } from "@iommufd/kit";
import { Admin, Iommufd } from "@iommufd/proto/iommufd";
import { Option } from "commander";
import { z } from "zod";
import { adminService } from "./admin.js";
import { buildService } from "./core/dispatch.js";
import { Host } from "./core/host.js";
import { Dataplane } from "./dataplane.js";
import type { DriverEnv, IommuDriver } from "./drivers/ops.js";
import { createSmmuV3Driver } from "./drivers/smmuv3.js";
import { createVtdDriver } from "./drivers/vtd.js";
import { hostMetrics } from "./metrics.js";
import { TestDevices } from "./testdev.js";
import { type Device, unbindDevice } from "./uapi/device.js";
import { iommufdTable, sessionlessTable } from "./uapi/table.js";

const IOMMU_SPEC = /^([a-z][a-z0-9-]*)=(smmuv3|vtd)$/;
const DEFAULT_IOMMUS = ["smmu0=smmuv3", "dmar0=vtd"];

const schema = z.object({
  iommu: z.array(z.string().regex(IOMMU_SPEC, "expected <id>=smmuv3|vtd, e.g. smmu0=smmuv3")).min(1),
});

const DRIVERS: Record<string, (id: string, env: DriverEnv) => IommuDriver> = {
  smmuv3: createSmmuV3Driver,
  vtd: createVtdDriver,
};

await runService({
  name: "host-iommufd",
  description: "The host kernel: physical memory, physical IOMMUs and the iommufd uAPI over gRPC",
  defaultGrpcPort: 50051,
  options: (cmd) =>
    cmd.addOption(
      new Option("--iommu <id=vendor>", "a physical IOMMU instance (repeatable): smmu0=smmuv3, dmar0=vtd")
        .env("HOST_IOMMUS")
        // Given flags replace the default list (commander hands the default in as `prev` otherwise).
        .argParser((v: string, prev: string[] | undefined) => [...(prev === DEFAULT_IOMMUS ? [] : (prev ?? [])), ...v.split(",")])
        .default(DEFAULT_IOMMUS),
    ),
  schema,
  async start({ config, log, bus }) {
    const host = new Host(log.child({ component: "iommufd" }), bus);
    const dataplane = new Dataplane(host, bus, config.name);
    for (const spec of config.iommu) {
      const [, id, vendor] = IOMMU_SPEC.exec(spec) as RegExpExecArray;
      host.pci.addIommu(DRIVERS[vendor as string]?.(id as string, dataplane.driverEnv()) as IommuDriver);
    }
    // A session's devices are unbound before its objects go (their VFIO fds close first).
    host.onSessionClosing.push((s) => {
      for (const o of s.objects.objects()) if (o.type === "DEVICE") unbindDevice(o as Device);
    });
    const testDevices = new TestDevices(host, bus);
    const metrics = hostMetrics(host, dataplane);
    dataplane.start();
    log.info({ iommus: config.iommu }, "physical IOMMUs up");
    return {
      services: [
        bind(Iommufd, buildService(Iommufd, host, iommufdTable, sessionlessTable)),
        bind(Admin, adminService({ host, dataplane, testDevices, metrics })),
      ],
      async stop() {
        dataplane.stop();
        host.shutdown();
      },
    };
  },
});
