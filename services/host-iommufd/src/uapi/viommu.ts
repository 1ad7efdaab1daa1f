// VIOMMU, VDEVICE and HW_QUEUE (the kernel's viommu.c): a slice of a physical
// IOMMU for one VM, wrapping a nesting-parent HWPT_PAGING; a vDEVICE binds a
// device to its guest-visible ID on that vIOMMU. References: a vIOMMU holds
// its parent HWPT; a vDEVICE holds its vIOMMU (the device only "waits" on it:
// unbinding the device destroys the vDEVICE and leaves its ID a tombstone).
import { ErrnoError, check } from "@iommufd/kit";
import { HwQueueType, type Iommufd, ViommuType } from "@iommufd/proto/iommufd";
import type { UcmdTable } from "../core/dispatch.js";
import { IommufdObject } from "../core/object.js";
import type { Session } from "../core/session.js";
import type { IommuDriver, ViommuHw } from "../drivers/ops.js";
import { ULONG_MAX } from "../iopt/io-pagetable.js";
import type { Device } from "./device.js";
import type { Veventq } from "./eventq.js";
import type { HwptPaging } from "./hw-pagetable.js";

export class Viommu extends IommufdObject {
  readonly type = "VIOMMU" as const;
  readonly vdevices = new Map<bigint, Vdevice>();
  readonly veventqs = new Map<number, Veventq>();
  /** Events for a type with no vEVENTQ are discarded (counted). */
  discarded = 0;
  hw!: ViommuHw;

  /** Takes a reference on the parent (dropped in release). */
  constructor(
    readonly parent: HwptPaging,
    readonly viommuType: number,
  ) {
    super();
    parent.users++;
  }

  get driver(): IommuDriver {
    return this.parent.driver;
  }

  release(): void {
    this.hw?.free();
    this.parent.users--;
  }

  override describe() {
    return { type: this.viommuType, hwpt_id: this.parent.id, iommu: this.driver.id, vdevices: this.vdevices.size, discarded_events: this.discarded };
  }
}

export class Vdevice extends IommufdObject {
  readonly type = "VDEVICE" as const;

  /** Takes a reference on the vIOMMU and registers virt_id with the driver. */
  constructor(
    readonly session: Session,
    readonly viommu: Viommu,
    readonly device: Device,
    readonly virtId: bigint,
  ) {
    super();
    viommu.users++;
    viommu.vdevices.set(virtId, this);
    device.vdevice = this;
    viommu.hw.vdeviceAdd(device.dev, virtId);
  }

  release(): void {
    this.viommu.hw.vdeviceRemove(this.device.dev);
    this.viommu.vdevices.delete(this.virtId);
    if (this.device.vdevice === this) this.device.vdevice = undefined;
    this.viommu.users--;
  }

  /** The device is unbound first: this vDEVICE goes and its ID stays a tombstone until the session closes. */
  destroyForUnbind(): void {
    this.session.objects.remove(this, { tombstone: true });
  }

  override describe() {
    return { viommu_id: this.viommu.id, dev_id: this.device.id, virt_id: this.virtId };
  }
}

export const viommuHandlers: UcmdTable<typeof Iommufd> = {
  viommuAlloc(req, ucmd) {
    const { objects } = ucmd.session;
    check(req.flags === 0 && req.type !== ViommuType.DEFAULT, "EOPNOTSUPP", "flags must be 0 and type not DEFAULT");
    check(req.reserved === 0, "EOPNOTSUPP", "reserved must be 0");
    const { dev } = objects.get<Device>(req.devId, "DEVICE");
    if (dev.iommu.caps.viommuType === 0 || dev.iommu.caps.viommuType !== req.type) {
      throw new ErrnoError("EOPNOTSUPP", `the IOMMU does not support vIOMMU type ${req.type}`);
    }
    const parent = objects.get<HwptPaging>(req.hwptId, "HWPT_PAGING");
    if (!parent.domain.flags.nestParent || parent.auto) throw new ErrnoError("EINVAL", "hwpt_id is not a nesting parent");
    if (parent.driver !== dev.iommu) throw new ErrnoError("EINVAL", "the parent belongs to another IOMMU");
    const viommu = ucmd.alloc(new Viommu(parent, req.type));
    ucmd.point("viommu: driver alloc");
    viommu.hw = dev.iommu.allocViommu(dev, req.type, parent.domain, {
      vevent: (type, pdev, payload) => {
        const q = viommu.veventqs.get(type);
        if (!q || !viommu.vdevices.size || ![...viommu.vdevices.values()].some((v) => v.device.dev === pdev)) {
          viommu.discarded++;
          return;
        }
        q.report(payload);
      },
    });
    return { outViommuId: viommu.id, data: new Uint8Array(0) };
  },

  vdeviceAlloc(req, ucmd) {
    const { objects } = ucmd.session;
    check(req.virtId <= ULONG_MAX, "EINVAL", "virt_id too large");
    const viommu = objects.get<Viommu>(req.viommuId, "VIOMMU");
    const device = objects.get<Device>(req.devId, "DEVICE");
    if (device.dev.iommu !== viommu.driver) throw new ErrnoError("EINVAL", "the device is behind another IOMMU than the vIOMMU");
    if (device.vdevice) throw new ErrnoError("EEXIST", `the device already has vDEVICE ${device.vdevice.id}`);
    if (viommu.vdevices.has(req.virtId)) throw new ErrnoError("EEXIST", `virt_id 0x${req.virtId.toString(16)} is in use on this vIOMMU`);
    ucmd.point("vdevice: alloc");
    const vdev = ucmd.alloc(new Vdevice(ucmd.session, viommu, device, req.virtId));
    return { outVdeviceId: vdev.id };
  },

  hwQueueAlloc(req, { session }) {
    check(req.flags === 0 && req.type !== HwQueueType.DEFAULT, "EOPNOTSUPP", "flags must be 0 and type not DEFAULT");
    check(req.length !== 0n, "EINVAL", "length is 0");
    check(req.nestingParentIova + req.length - 1n <= ULONG_MAX, "EOVERFLOW", "nesting_parent_iova + length overflows");
    const viommu = session.objects.get<Viommu>(req.viommuId, "VIOMMU");
    // Neither host driver has hardware-accelerated queues (that is Tegra241 CMDQV): the kernel's answer.
    throw new ErrnoError("EOPNOTSUPP", `IOMMU ${viommu.driver.id} has no HW queue of type ${req.type}`);
  },
};
