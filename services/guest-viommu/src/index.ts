// Public surface of @iommufd/guest-viommu: the two layers (guest kernel,
// VMM), the interface between them, the VM lifecycle and the control
// service, and the in-process fake host for tests.
export type { GuestPciFunction, IommuVendor, IrqLine, Mmio, VirtualIommuPort } from "./guest/port.js";
export { ByteMapRam, type GuestRam, type GuestRamOp, type RamRegion } from "./guest/ram.js";
export { EventLog, type GuestLogEntry, type GuestLogSource } from "./guest/log.js";
export { GuestKernel, type KernelCounters } from "./guest/kernel.js";
export type { GuestIommuDriver, IssuedInvalidation } from "./guest/iommu.js";
export { IOMMU_PROT } from "./guest/pgtable.js";
export type { HostEventPort, HostInventory, IommufdClient } from "./vmm/client.js";
export { RAM_BASE, Vmm, type VmmDeviceSpec, type VmmOptions } from "./vmm/vmm.js";
export { VSmmu } from "./vmm/vsmmu.js";
export { VVtd } from "./vmm/vvtd.js";
export { BusGuestRam, adminInventory, busEventPort } from "./vmm/host.js";
export { Vm, type HostConnection, type VmOptions } from "./vm.js";
export { guestService } from "./control.js";
export { guestSchema, parseDeviceSpec, parseSize } from "./config.js";
export { FakeHost, type FakeDevice } from "./testing/fake-host.js";
