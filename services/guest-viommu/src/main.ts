// guest-viommu process entry: one VM (its VMM and its guest kernel).
// The VMM front ends, the guest driver and the guest/v1 control service
// arrive with the guest issue; today the process starts, serves health and
// reflection, answers pings on iommu.v1.ctl.<name>.ping, and stops on SIGTERM.
import { runService } from "@iommufd/kit";

await runService({
  name: "guest-viommu",
  description: "A VM: the VMM's virtual SMMUv3 / VT-d on iommufd and the guest kernel's IOMMU driver",
  defaultGrpcPort: 50052,
  async start() {
    return { services: [] };
  },
});
