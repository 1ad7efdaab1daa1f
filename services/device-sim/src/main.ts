// device-sim process entry: simulated PCIe endpoints (PASID, ATS/ATC, PRI)
// whose DMA crosses the host's IOMMU over NATS (DESIGN §2, §6), with the
// device.v1.Device control API over gRPC. `--help` documents the endpoint
// spec and config file format (config.ts).
import { bind, runService } from "@iommufd/kit";
import { Device } from "@iommufd/proto/device";
import { allEndpoints, ConfigError, deviceSimOptions, deviceSimSchema } from "./config.js";
import { deviceService } from "./control.js";
import { DeviceSim } from "./sim.js";

await runService({
  name: "device-sim",
  description: "Simulated PCIe endpoints (PASID, ATS/ATC, PRI) whose DMA crosses the host's IOMMU",
  defaultGrpcPort: 50053,
  options: deviceSimOptions,
  schema: deviceSimSchema,
  async start({ config, log, bus }) {
    let endpoints;
    try {
      endpoints = allEndpoints(config);
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
      process.stderr.write(`device-sim: invalid configuration:\n  ${e.message}\n`);
      process.exit(2);
    }
    const sim = new DeviceSim({
      bus,
      processName: config.name,
      log,
      endpoints,
      requestTimeoutMs: config.requestTimeoutMs,
      priTimeoutMs: config.priTimeoutMs,
      unregisterOnStop: config.unregister,
    });
    sim.start();
    log.info({ endpoints: endpoints.map((e) => ({ name: e.name, rid: e.rid.toString(16).padStart(4, "0") })) }, "endpoints configured");
    return {
      services: [bind(Device, deviceService(sim))],
      stop: () => sim.stop(),
    };
  },
});
