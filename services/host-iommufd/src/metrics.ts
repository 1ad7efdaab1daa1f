// Prometheus metrics of the host (prom-client): sessions and objects by
// type, data-plane counters, and each IOMMU driver's hardware counters
// (translations, cache hits/misses, events), read when scraped.
import { Gauge, Registry } from "prom-client";
import type { Host } from "./core/host.js";
import type { Dataplane } from "./dataplane.js";

export function hostMetrics(host: Host, dataplane: Dataplane): Registry {
  const registry = new Registry();
  registry.setDefaultLabels({ process: "host-iommufd" });
  new Gauge({
    name: "iommufd_sessions",
    help: "Open iommufd sessions",
    registers: [registry],
    collect() {
      this.set(host.sessions.size);
    },
  });
  new Gauge({
    name: "iommufd_objects",
    help: "Live iommufd objects by type",
    labelNames: ["type"],
    registers: [registry],
    collect() {
      this.reset();
      for (const s of host.sessions.values()) for (const o of s.objects.objects()) this.inc({ type: o.type });
    },
  });
  new Gauge({
    name: "iommufd_pinned_bytes",
    help: "Pinned user memory across sessions",
    registers: [registry],
    collect() {
      let pages = 0;
      for (const s of host.sessions.values()) pages += s.mm.locked;
      this.set(pages * 4096);
    },
  });
  new Gauge({
    name: "iommufd_dataplane_total",
    help: "Data-plane counters (DMA batches/ops/bytes/faults, ATS, PRI, ATC invalidations, guest memory ops)",
    labelNames: ["counter"],
    registers: [registry],
    collect() {
      for (const [k, v] of Object.entries(dataplane.counters)) this.set({ counter: k }, v);
    },
  });
  new Gauge({
    name: "iommufd_iommu_total",
    help: "Physical IOMMU counters by instance",
    labelNames: ["iommu", "counter"],
    registers: [registry],
    collect() {
      this.reset();
      for (const d of host.pci.iommus.values()) for (const [k, v] of Object.entries(d.counters())) this.set({ iommu: d.id, counter: k }, v);
    },
  });
  return registry;
}
