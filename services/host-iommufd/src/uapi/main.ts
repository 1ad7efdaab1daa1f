// The generic ioctls of main.c: IOMMU_DESTROY and IOMMU_VFIO_IOAS.
import { check, ErrnoError } from "@iommufd/kit";
import { type Iommufd, VfioIoasOp } from "@iommufd/proto/iommufd";
import type { UcmdTable } from "../core/dispatch.js";

export const mainHandlers: UcmdTable<typeof Iommufd> = {
  destroy(req, { session }) {
    const obj = session.objects.get(req.id);
    if (obj.type === "DEVICE") throw new ErrnoError("EBUSY", "a DEVICE is held by its driver: use DeviceUnbind");
    session.objects.destroy(req.id);
    if (req.id === session.vfioIoasId) session.vfioIoasId = 0;
    return {};
  },

  vfioIoas(req, { session }) {
    check(req.reserved === 0, "EOPNOTSUPP", "reserved must be 0");
    switch (req.op) {
      case VfioIoasOp.GET:
        if (session.vfioIoasId === 0 || !session.objects.find(session.vfioIoasId)) throw new ErrnoError("ENODEV", "no compat IOAS");
        return { ioasId: session.vfioIoasId };
      case VfioIoasOp.SET:
        session.objects.get(req.ioasId, "IOAS");
        session.vfioIoasId = req.ioasId;
        return { ioasId: req.ioasId };
      case VfioIoasOp.CLEAR:
        session.vfioIoasId = 0;
        return { ioasId: 0 };
      default:
        throw new ErrnoError("EOPNOTSUPP", `unknown op ${req.op}`);
    }
  },
};
