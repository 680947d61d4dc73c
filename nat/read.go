package nat

import (
	"net/netip"
	"slices"
	"time"

	"github.com/sluicenet/sluice/bpf"
)

// KernelService is a service as the maps hold it, read back into the model
// by Table.Adopted.
type KernelService struct {
	// ID is the service's ID in the maps (bpf.Svc.ID).
	ID uint32
	// Service is the service read back, so that Choose over it decides
	// as the datapath does. The maps keep less than a Service says:
	// Backends come from the list the first frontend found names (by
	// slot order, with Local and Terminating from its counts), and their
	// Weight is not kept (0: the Maglev table in the maps is the truth,
	// see MaglevBackend); a frontend is External when its flags make it
	// so (NodePort, source ranges) or when its traffic-policy flag can
	// be told apart only that way, and ExternalLocal and InternalLocal
	// are what the frontends' LocalOnly flags say.
	Service Service
	// Frontends are the frontends' values in the maps, in the order of
	// Service.Frontends.
	Frontends []bpf.Svc
}

// Adopted returns the services the maps held when the Table was made (or
// last read them) and that no Upsert or Sync has taken over since, by ID:
// the reading the Table adopts a previous process's services from. A
// debugging tool makes a Table over another process's maps and explains
// flows with Choose over these.
func (t *Table) Adopted() ([]KernelService, error) {
	if err := t.made(); err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	ids := make([]uint32, 0, len(t.adoptedByID))
	for id := range t.adoptedByID {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var out []KernelService
	for _, id := range ids {
		p := &programmed{id: id}
		ks := KernelService{ID: id}
		keys := slices.Clone(t.adoptedByID[id])
		slices.SortFunc(keys, func(a, b bpf.SvcKey) int {
			return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), a.Port).Compare(netip.AddrPortFrom(netip.AddrFrom16(b.Addr), b.Port))
		})
		for _, k := range keys {
			v, ok := t.adopted[k]
			if !ok {
				continue
			}
			if err := t.adoptList(p, v); err != nil {
				return nil, err
			}
			ks.Frontends = append(ks.Frontends, v)
		}
		if len(ks.Frontends) == 0 {
			continue
		}
		ks.Service = readService(keys, ks.Frontends, p.ordered, t.adoptedRanges[id])
		out = append(out, ks)
	}
	return out, nil
}

// readService builds the Service whose frontends' values are vals (at
// keys), with backends ordered and source ranges ranges.
func readService(keys []bpf.SvcKey, vals []bpf.Svc, ordered []Backend, ranges []bpf.SvcRangeKey) Service {
	s := Service{Backends: ordered}
	// Frontends whose flags make them external (a NodePort, or source
	// ranges, which only external frontends check) say ExternalLocal.
	// The others are internal unless their LocalOnly flag disagrees
	// with what the first of them says, which only ExternalLocal can
	// explain.
	known := func(v bpf.Svc) bool { return v.Flags&(bpf.SvcNodePort|bpf.SvcSourceRanges) != 0 }
	extSet := false
	for _, v := range vals {
		if known(v) {
			s.ExternalLocal, extSet = v.Flags&bpf.SvcLocalOnly != 0, true
		}
	}
	for _, v := range vals {
		if !known(v) && v.Flags&bpf.SvcLocalOnly != 0 && extSet && !s.ExternalLocal {
			s.InternalLocal = true
		}
	}
	for i, v := range vals {
		local := v.Flags&bpf.SvcLocalOnly != 0
		f := Frontend{
			Addr:     netip.AddrFrom16(keys[i].Addr).Unmap(),
			Port:     keys[i].Port,
			Protocol: keys[i].Proto,
			NodePort: v.Flags&bpf.SvcNodePort != 0,
		}
		if known(v) {
			f.External = true
		} else if local != s.InternalLocal {
			f.External = true
			s.ExternalLocal = local
		}
		s.Frontends = append(s.Frontends, f)
		if v.Flags&bpf.SvcAffinity != 0 {
			s.Affinity = time.Duration(v.AffinityTimeout) * time.Second
		}
		s.Maglev = s.Maglev || v.Flags&bpf.SvcMaglev != 0
	}
	for _, k := range ranges {
		addr := netip.AddrFrom16(k.Addr)
		bits := int(k.Prefixlen) - 64
		if k.Family == bpf.FamilyIPv4 {
			addr, bits = addr.Unmap(), bits-96
		}
		if p, err := addr.Prefix(bits); err == nil {
			s.SourceRanges = append(s.SourceRanges, p)
		}
	}
	return s
}
