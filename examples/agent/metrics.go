package main

import (
	"bufio"
	"fmt"
	"io"
	"log"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/sluicenet/sluice/bpf"
)

// The metrics are written in the Prometheus text exposition format
// (version 0.0.4) by hand: a "# HELP" and a "# TYPE" line per metric, then
// one `name{label="value",...} value` line per series. That is all a
// scraper needs, and it keeps the example inside the core module's
// dependencies.

// metricsHandler serves /metrics: the datapath's counters, read from the
// kernel at each scrape, and the agent's own status.
func (a *agent) metricsHandler(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	bw := bufio.NewWriter(w)
	if err := a.writeMetrics(bw); err != nil {
		// The header is gone; the scraper sees a truncated body and the
		// log says why.
		log.Printf("metrics: %v", err)
	}
	bw.Flush()
}

func (a *agent) writeMetrics(w io.Writer) error {
	a.mu.Lock()
	st := a.status
	ifaces := make([]string, 0, len(st.ifaces))
	for name := range st.ifaces {
		ifaces = append(ifaces, name)
	}
	a.mu.Unlock()
	slices.Sort(ifaces)

	m := &metricWriter{w: w}
	m.family("sluice_packets_total", "counter", "Packets the datapath decided at an interface, by hook (in the endpoint's terms: ingress is what reached it) and reason.")
	for _, name := range ifaces {
		c, err := a.dp.Counters(st.ifaces[name])
		if err != nil {
			return fmt.Errorf("counters of %s: %w", name, err)
		}
		for _, hook := range []struct {
			name string
			c    [bpf.ReasonCount]uint64
		}{{"ingress", c.Ingress}, {"egress", c.Egress}} {
			for r, n := range hook.c {
				m.sample("sluice_packets_total", n, "interface", name, "hook", hook.name, "reason", bpf.Reason(r).String())
			}
		}
	}
	tcIn, tcOut, err := a.dp.UnconfiguredCounters()
	if err != nil {
		return fmt.Errorf("counters of unconfigured interfaces: %w", err)
	}
	m.family("sluice_unconfigured_packets_total", "counter", "Packets at interfaces without a configuration (dropped, bar a few link protocols), by TC hook and reason.")
	for _, hook := range []struct {
		name string
		c    [bpf.ReasonCount]uint64
	}{{"tc_ingress", tcIn}, {"tc_egress", tcOut}} {
		for r, n := range hook.c {
			m.sample("sluice_unconfigured_packets_total", n, "hook", hook.name, "reason", bpf.Reason(r).String())
		}
	}
	hits, err := a.dp.RuleHits().All()
	if err != nil {
		return fmt.Errorf("rule hits: %w", err)
	}
	ids := make([]uint64, 0, len(hits))
	for id := range hits {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	m.family("sluice_rule_hits_total", "counter", "Packets each policy rule decided (or logged), by rule ID.")
	for _, id := range ids {
		m.sample("sluice_rule_hits_total", hits[id], "rule_id", strconv.FormatUint(id, 10))
	}
	entries, err := a.dp.Conntrack().Count()
	if err != nil {
		return fmt.Errorf("conntrack: %w", err)
	}
	m.family("sluice_conntrack_entries", "gauge", "Entries in the conntrack table.")
	m.sample("sluice_conntrack_entries", uint64(entries))
	m.family("sluice_conntrack_capacity", "gauge", "Capacity of the conntrack table.")
	m.sample("sluice_conntrack_capacity", uint64(a.dp.Conntrack().MaxEntries()))

	m.family("sluice_interfaces", "gauge", "Interfaces the last successful apply configured.")
	m.sample("sluice_interfaces", uint64(len(ifaces)))
	m.family("sluice_services", "gauge", "Services the last successful apply programmed.")
	m.sample("sluice_services", uint64(st.services))
	m.family("sluice_generation", "gauge", "The datapath generation of this process's Open.")
	m.sample("sluice_generation", uint64(a.dp.Generation()))
	m.family("sluice_settled", "gauge", "1 once this process's programs run every hook (Settle).")
	m.sample("sluice_settled", b2u(st.settled))
	m.family("sluice_applies_total", "counter", "Applies of the state file, by result (a file that does not parse or validate is an error).")
	for _, result := range []string{"ok", "error"} {
		m.sample("sluice_applies_total", st.applies[result], "result", result)
	}
	m.family("sluice_apply_writes_total", "counter", "What applies wrote, by object: interfaces configured or removed, services upserted or deleted, route and IP set member entries written or deleted, links attached.")
	for _, object := range []string{"interfaces", "services", "routes", "ipset_members", "links"} {
		m.sample("sluice_apply_writes_total", st.writes[object], "object", object)
	}
	m.family("sluice_last_apply_success", "gauge", "1 if the last apply succeeded, 0 if it failed and the state before it stays in force.")
	m.sample("sluice_last_apply_success", b2u(st.lastOK))
	m.family("sluice_last_apply_timestamp_seconds", "gauge", "When the last apply ended, in seconds since the epoch.")
	if !st.lastTime.IsZero() {
		m.printf("sluice_last_apply_timestamp_seconds %.3f\n", float64(st.lastTime.UnixNano())/1e9)
	}
	return m.err
}

// metricWriter writes the text format and keeps the first error.
type metricWriter struct {
	w   io.Writer
	err error
}

func (m *metricWriter) family(name, typ, help string) {
	m.printf("# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
}

// sample writes one series; labels are name, value pairs.
func (m *metricWriter) sample(name string, v uint64, labels ...string) {
	var b strings.Builder
	b.WriteString(name)
	if len(labels) > 0 {
		b.WriteByte('{')
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, "%s=\"%s\"", labels[i], labelEscaper.Replace(labels[i+1]))
		}
		b.WriteByte('}')
	}
	m.printf("%s %d\n", b.String(), v)
}

func (m *metricWriter) printf(format string, args ...any) {
	if m.err == nil {
		_, m.err = fmt.Fprintf(m.w, format, args...)
	}
}

// labelEscaper escapes a label value as the text format wants.
var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}
