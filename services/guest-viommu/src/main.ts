// guest-viommu process entry: one VM — its VMM (one iommufd session on the
// host, a virtual SMMUv3 or VT-d front end) and its guest kernel (IOMMU
// driver, DMA API, SVA, I/O page faults) — plus the guest.v1 control
// service. The VM boots in the background as soon as the host answers; the
// process is ready (health, control API) before that.
import { bind, createClient, runService } from "@iommufd/kit";
import { Guest } from "@iommufd/proto/guest";
import { Admin, Iommufd } from "@iommufd/proto/iommufd";
import { guestOptions, guestSchema } from "./config.js";
import { guestService } from "./control.js";
import { Vm } from "./vm.js";
import { BusGuestRam, adminInventory, busEventPort } from "./vmm/host.js";

await runService({
  name: "guest-viommu",
  description: "A VM: the VMM's virtual SMMUv3 / VT-d on iommufd and the guest kernel's IOMMU driver",
  defaultGrpcPort: 50052,
  options: guestOptions,
  schema: guestSchema,
  async start({ config, log, bus }) {
    const vm = new Vm({
      vmName: config.name,
      vendor: config.vendor,
      memory: config.memory,
      devices: config.device,
      log: log.child({ component: "vm" }),
      vmm: { leaseMs: config.leaseMs },
      connect: () => {
        let token: string | undefined;
        const io = createClient(Iommufd, config.host, { metadata: (): Record<string, string> => (token ? { "iommufd-session": token } : {}) });
        const admin = createClient(Admin, config.host);
        return {
          client: io.rpc,
          setSessionToken: (t) => {
            token = t;
          },
          inventory: adminInventory(admin.rpc),
          events: busEventPort(bus),
          ramFactory: ({ sessionId, userVa, regions }) => new BusGuestRam(bus, sessionId, userVa, regions),
          close: () => {
            io.close();
            admin.close();
          },
        };
      },
    });
    log.info({ vendor: config.vendor, memory: config.memory.toString(), host: config.host, devices: config.device.length }, "VM configured");
    vm.start();
    return {
      services: [bind(Guest, guestService(vm))],
      stop: () => vm.stop(),
    };
  },
});
