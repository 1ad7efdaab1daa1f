// The embedded default topology: one host with an SMMUv3 and a VT-d unit,
// one device-sim with an endpoint behind each, and one guest per
// architecture with that endpoint assigned. `iommufd-cli up` and
// `iommufd-cli compose` use it when no --topology file is given; it is
// also the reference example of the format (see schema.ts).
export const DEFAULT_TOPOLOGY_YAML = `# iommufd-nested-emu topology (the embedded default).
# Process names are NATS subject tokens and compose service names.
version: 1
name: iommufd

nats:
  port: 4222                # or  url: nats://somewhere:4222  (use a running server)

host:
  name: host
  grpc_port: 50051
  iommus:                   # the physical IOMMU instances
    - { id: smmu0, vendor: smmuv3 }
    - { id: dmar0, vendor: vtd }

devices:                    # device-sim processes
  - name: devsim0
    grpc_port: 50061
    endpoints:              # host device names: devsim0/nic0, devsim0/nvme0
      - name: nic0
        rid: "00:03.0"
        iommu: smmu0
        max_pasid_log2: 8
        ats: { atc_entries: 64 }
        pri: { outstanding_capacity: 32 }
      - name: nvme0
        rid: "00:04.0"
        iommu: dmar0
        max_pasid_log2: 8
        ats: { atc_entries: 32 }
        pri: { outstanding_capacity: 16 }

guests:                     # guest-viommu processes, one VM each
  - name: vm-smmu
    vendor: smmuv3
    memory: 1GiB
    grpc_port: 50071
    devices: [devsim0/nic0]
  - name: vm-vtd
    vendor: vtd
    memory: 1GiB
    grpc_port: 50072
    devices: [devsim0/nvme0]
`;
