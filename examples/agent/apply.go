package main

import (
	"errors"
	"fmt"
	"log"
	"maps"
	"net"
	"net/netip"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/sluicenet/sluice/attach"
	"github.com/sluicenet/sluice/datapath"
	"github.com/sluicenet/sluice/ipsets"
	smaps "github.com/sluicenet/sluice/maps"
	"github.com/sluicenet/sluice/nat"
	"github.com/sluicenet/sluice/routes"
)

// agent holds the datapath and what it last programmed into it.
type agent struct {
	dp     *datapath.Datapath
	at     *attach.Attacher
	cgroup string

	// applied is what the kernel holds as this process programmed it; nil
	// before this process's first apply, and after a failed one, so that
	// the next apply programs everything rather than trust a half-made
	// change. Only the main loop touches it.
	applied *applied
	// settled says Settle ran: this process's programs run every hook.
	settled bool
	// writes counts what applies wrote, by object (see status.writes).
	writes map[string]uint64

	// mu guards status, which /metrics reads.
	mu     sync.Mutex
	status status
}

// applied is one apply's result, the base of the next one's diff.
type applied struct {
	ifaces   map[string]appliedIface
	routes   map[netip.Prefix]routes.Route
	services map[string]nat.Service
	sets     ipsets.Members
}

// appliedIface is an interface as it was configured.
type appliedIface struct {
	ifindex int
	cfg     datapath.Interface
}

// status is what /metrics reports of the agent itself.
type status struct {
	// ifaces are the configured interfaces' indexes, by name.
	ifaces   map[string]int
	services int
	// lastOK, lastErr and lastTime are the last apply's result.
	lastOK   bool
	lastErr  string
	lastTime time.Time
	// applies counts applies by result ("ok", "error").
	applies map[string]uint64
	settled bool
	// writes counts, since the start, the interfaces configured, the
	// services upserted or deleted (a full apply passes all of them to
	// Sync), the route and IP set member entries written or deleted, and
	// the links attached: what "apply only what changed" keeps small.
	writes map[string]uint64
}

// record notes the result of an apply (err nil) or of a state file that
// could not be applied.
func (a *agent) record(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.status.lastOK, a.status.lastTime, a.status.lastErr = err == nil, time.Now(), ""
	result := "ok"
	if err != nil {
		result, a.status.lastErr = "error", err.Error()
	}
	a.status.applies[result]++
	a.status.settled = a.settled
	a.status.writes = maps.Clone(a.writes)
	if a.applied != nil {
		a.status.ifaces = map[string]int{}
		for name, i := range a.applied.ifaces {
			a.status.ifaces[name] = i.ifindex
		}
		a.status.services = len(a.applied.services)
	}
}

// apply programs d, changing only what differs from the last apply, and
// make-before-break: first everything d adds or changes (IP set members and
// routes as the union of old and new, interfaces, their hooks, then
// services), then what it removes. A policy that names a new set member, or
// a new endpoint's route, finds it in place when it switches; a member or
// route that goes is removed only after no policy of d's needs it.
func (a *agent) apply(d *desired) (err error) {
	prev := a.applied
	a.applied = nil // until this apply completes
	full := prev == nil
	if full {
		// What an earlier process (or a failed apply) left is the base
		// of the unions; services and interfaces are programmed whole.
		prev = &applied{ifaces: map[string]appliedIface{}}
		if prev.sets, err = a.dp.IPSets().Read(); err != nil {
			return fmt.Errorf("read IP sets: %w", err)
		}
		rs, err := a.dp.Routes().Routes()
		if err != nil {
			return fmt.Errorf("read routes: %w", err)
		}
		prev.routes = map[netip.Prefix]routes.Route{}
		for _, r := range rs {
			prev.routes[r.Prefix] = r
		}
	}
	next := &applied{ifaces: map[string]appliedIface{}, routes: map[netip.Prefix]routes.Route{},
		services: d.services, sets: d.sets}
	for name, cfg := range d.ifaces {
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			return fmt.Errorf("interfaces[%q]: %w", name, err)
		}
		next.ifaces[name] = appliedIface{ifindex: ifi.Index, cfg: cfg}
	}
	for p, r := range d.routes {
		if ifname, ok := d.endpoint[p]; ok {
			r.Ifindex = uint32(next.ifaces[ifname].ifindex)
		}
		next.routes[p] = r
	}

	// Make: what d adds or changes.
	stats, err := a.dp.IPSets().Sync(unionSets(prev.sets, next.sets))
	a.count("ipset_members", stats)
	if err != nil {
		return fmt.Errorf("IP sets: %w", err)
	}
	stats, err = a.dp.Routes().Sync(unionRoutes(prev.routes, next.routes))
	a.count("routes", stats)
	if err != nil {
		return fmt.Errorf("routes: %w", err)
	}
	if d.snat != nil {
		if err := a.dp.SNAT().Set(*d.snat); err != nil {
			return fmt.Errorf("snat: %w", err)
		}
	}
	changed := map[int]datapath.Interface{}
	var attachNew []string
	for name, n := range next.ifaces {
		p, ok := prev.ifaces[name]
		if ok && p.ifindex != n.ifindex {
			// The interface was made again: its old index goes before
			// the kernel can hand it to the next one (RemoveInterface).
			if err := a.dp.RemoveInterface(p.ifindex); err != nil {
				return fmt.Errorf("interfaces[%q]: remove old index %d: %w", name, p.ifindex, err)
			}
		}
		if !ok || p.ifindex != n.ifindex || !reflect.DeepEqual(p.cfg, n.cfg) {
			changed[n.ifindex] = n.cfg
		}
		if !ok || p.ifindex != n.ifindex {
			attachNew = append(attachNew, name)
		}
	}
	if len(changed) > 0 {
		if err := a.dp.SetInterfaces(changed); err != nil {
			return fmt.Errorf("interfaces: %w", err)
		}
		a.writes["interfaces"] += uint64(len(changed))
	}
	// An interface is configured before its hooks run our programs, so no
	// packet of it meets them without its entry. On a takeover (full)
	// this replaces the pinned links of the previous process in place.
	slices.Sort(attachNew)
	for _, name := range attachNew {
		if _, err := a.at.AttachTC(name, attach.Ingress, a.dp.TCIngress()); err != nil {
			return fmt.Errorf("interfaces[%q]: attach: %w", name, err)
		}
		if _, err := a.at.AttachTC(name, attach.Egress, a.dp.TCEgress()); err != nil {
			return fmt.Errorf("interfaces[%q]: attach: %w", name, err)
		}
		a.writes["links"] += 2
	}
	// Services last: a new backend's interface has its policy and its
	// hooks before the first flow is sent to it.
	var svcErr error
	if full {
		svcErr = a.dp.Services().Sync(next.services)
		a.writes["services"] += uint64(len(next.services))
	} else if upserts, deletes := diffServices(prev.services, next.services); len(upserts) > 0 || len(deletes) > 0 {
		svcErr = a.dp.Services().Apply(upserts, deletes)
		a.writes["services"] += uint64(len(upserts) + len(deletes))
	}
	if svcErr != nil {
		return fmt.Errorf("services: %w", svcErr)
	}
	if full && a.cgroup != "" {
		for _, p := range a.dp.SockPrograms().All() {
			if _, err := a.at.AttachCgroup(a.cgroup, p.Attach, p.Program); err != nil {
				return fmt.Errorf("cgroup %s: %w", a.cgroup, err)
			}
			a.writes["links"]++
		}
	}
	if !a.settled {
		// Every hook runs this generation's programs now: the previous
		// process's records and policies can go.
		if err := a.dp.Settle(); err != nil {
			return fmt.Errorf("settle: %w", err)
		}
		a.settled = true
		if err := a.detachStale(next.ifaces); err != nil {
			return err
		}
	}

	// Break: what d no longer has.
	for name, p := range prev.ifaces {
		if _, ok := next.ifaces[name]; ok {
			continue
		}
		for _, dir := range []attach.Direction{attach.Ingress, attach.Egress} {
			if err := a.at.DetachTC(name, dir); err != nil && !errors.Is(err, attach.ErrNotAttached) && !errors.Is(err, attach.ErrNoInterface) {
				return fmt.Errorf("interfaces[%q]: detach: %w", name, err)
			}
		}
		if err := a.dp.RemoveInterface(p.ifindex); err != nil {
			return fmt.Errorf("interfaces[%q]: remove: %w", name, err)
		}
		a.writes["interfaces"]++
	}
	stats, err = a.dp.IPSets().Sync(next.sets)
	a.count("ipset_members", stats)
	if err != nil {
		return fmt.Errorf("IP sets: %w", err)
	}
	stats, err = a.dp.Routes().Sync(slices.Collect(maps.Values(next.routes)))
	a.count("routes", stats)
	if err != nil {
		return fmt.Errorf("routes: %w", err)
	}
	a.applied = next
	return nil
}

// count adds the entries a Sync wrote or deleted to writes[object].
func (a *agent) count(object string, s smaps.SyncStats) {
	a.writes[object] += uint64(s.Added + s.Changed + s.Deleted)
}

// detachStale detaches the TC links an earlier process attached to
// interfaces the state no longer names (Settle removed their entries, so
// their packets would drop), and its cgroup links on a cgroup other than
// -cgroup.
func (a *agent) detachStale(ifaces map[string]appliedIface) error {
	list, err := a.at.List()
	if err != nil {
		return fmt.Errorf("list attachments: %w", err)
	}
	cgroup := ""
	if a.cgroup != "" {
		if cgroup, err = filepath.Abs(a.cgroup); err == nil {
			cgroup, err = filepath.EvalSymlinks(cgroup)
		}
		if err != nil {
			return fmt.Errorf("cgroup %s: %w", a.cgroup, err)
		}
	}
	for _, at := range list {
		if at.Cgroup != "" && at.Cgroup != cgroup {
			// Started before with another -cgroup, or none.
			typ, _ := at.Hook.AttachType()
			if err := a.at.DetachCgroup(at.Cgroup, typ); err != nil && !errors.Is(err, attach.ErrNotAttached) {
				return fmt.Errorf("detach %s from %s: %w", at.Hook, at.Cgroup, err)
			}
			log.Printf("detached %s from %s, which is not -cgroup", at.Hook, at.Cgroup)
			continue
		}
		if _, ok := ifaces[at.Ifname]; ok || at.Ifname == "" {
			continue
		}
		var dir attach.Direction
		switch at.Hook {
		case attach.HookTCIngress:
			dir = attach.Ingress
		case attach.HookTCEgress:
			dir = attach.Egress
		default:
			continue
		}
		if err := a.at.DetachTC(at.Ifname, dir); err != nil && !errors.Is(err, attach.ErrNotAttached) {
			return fmt.Errorf("detach %s %s: %w", at.Ifname, dir, err)
		}
		log.Printf("detached %s from %s, which the state no longer names", dir, at.Ifname)
	}
	return nil
}

// diffServices returns the services of next that are new or changed, and
// the names of prev's that next lacks.
func diffServices(prev, next map[string]nat.Service) (map[string]nat.Service, []string) {
	upserts := map[string]nat.Service{}
	for name, s := range next {
		if p, ok := prev[name]; !ok || !reflect.DeepEqual(p, s) {
			upserts[name] = s
		}
	}
	var deletes []string
	for name := range prev {
		if _, ok := next[name]; !ok {
			deletes = append(deletes, name)
		}
	}
	slices.Sort(deletes)
	return upserts, deletes
}

// unionSets returns every member of a and b, set by set.
func unionSets(a, b ipsets.Members) ipsets.Members {
	out := ipsets.Members{}
	for _, m := range []ipsets.Members{a, b} {
		for id, set := range m {
			u := out[id]
			for _, n := range set.Nets {
				if !slices.Contains(u.Nets, n) {
					u.Nets = append(u.Nets, n)
				}
			}
			for _, np := range set.NamedPorts {
				if !slices.Contains(u.NamedPorts, np) {
					u.NamedPorts = append(u.NamedPorts, np)
				}
			}
			out[id] = u
		}
	}
	return out
}

// unionRoutes returns the routes of both, next's where a prefix is in
// both.
func unionRoutes(prev, next map[netip.Prefix]routes.Route) []routes.Route {
	out := make(map[netip.Prefix]routes.Route, len(prev)+len(next))
	for p, r := range prev {
		out[p] = r
	}
	for p, r := range next {
		out[p] = r
	}
	return slices.Collect(maps.Values(out))
}
