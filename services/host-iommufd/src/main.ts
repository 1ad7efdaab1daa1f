// host-iommufd process entry: the host kernel. Serves iommufd.v1.Iommufd
// (the uAPI, one dispatch table) and iommufd.v1.Admin over gRPC.
import { bind, runService } from "@iommufd/kit";
import { Admin, Iommufd } from "@iommufd/proto/iommufd";
import { adminService } from "./admin.js";
import { buildService } from "./core/dispatch.js";
import { Host } from "./core/host.js";
import { iommufdTable, sessionlessTable } from "./uapi/table.js";

await runService({
  name: "host-iommufd",
  description: "The host kernel: physical memory, physical IOMMUs and the iommufd uAPI over gRPC",
  defaultGrpcPort: 50051,
  async start({ log }) {
    const host = new Host(log.child({ component: "iommufd" }));
    return {
      services: [bind(Iommufd, buildService(Iommufd, host, iommufdTable, sessionlessTable)), bind(Admin, adminService(host))],
      async stop() {
        host.shutdown();
      },
    };
  },
});
