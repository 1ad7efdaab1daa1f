// device-sim process entry: simulated PCIe endpoints that DMA over the bus.
// The endpoints, DMA engines and the device/v1 control service arrive with
// the device-sim issue; today the process starts, serves health and
// reflection, answers pings on iommu.v1.ctl.<name>.ping, and stops on SIGTERM.
import { runService } from "@iommufd/kit";

await runService({
  name: "device-sim",
  description: "Simulated PCIe endpoints (PASID, ATS/ATC, PRI) whose DMA crosses the host's IOMMU",
  defaultGrpcPort: 50053,
  async start() {
    return { services: [] };
  },
});
