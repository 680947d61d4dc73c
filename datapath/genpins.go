package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
)

// The kernel empties a prog array once no descriptor or pin of it is
// left, even while attached programs still tail-call into it: every
// policy of a generation whose process exited would be gone, and new
// flows would drop as bpf.ReasonDroppedNoPolicy. So each generation pins
// its prog arrays (the TC and the XDP object's two each) under PinDir, named
//
//	<array>_gen<N>
//
// (bpffs refuses names with dots), and the pins stay until a newer
// generation settles, when no attached program uses the older arrays any
// more. Without PinDir nothing can be kept past Close.

// generationArrays are the prog arrays a generation pins.
func (d *Datapath) generationArrays() map[string]*ebpf.Map {
	return map[string]*ebpf.Map{bpf.MapPolicyJumps: d.objs.SlPolicyJumps, bpf.MapConts: d.objs.SlConts,
		bpf.MapXDPPolicyJumps: d.xdp.SlXdpPolicyJumps, bpf.MapXDPConts: d.xdp.SlXdpConts}
}

// generationPin is where generation gen pins the prog array name.
func generationPin(pinDir, name string, gen uint32) string {
	return filepath.Join(pinDir, fmt.Sprintf("%s_gen%d", name, gen))
}

// pinGeneration pins this generation's prog arrays, when pinning.
func (d *Datapath) pinGeneration() error {
	if d.state.pinDir == "" {
		return nil
	}
	for name, m := range d.generationArrays() {
		if err := m.Pin(generationPin(d.state.pinDir, name, d.generation)); err != nil {
			return fmt.Errorf("pin %s: %w", name, err)
		}
	}
	return nil
}

// unpinGenerations removes the prog-array pins of the generations
// unpin says go.
func (d *Datapath) unpinGenerations(unpin func(gen uint32) bool) error {
	if d.state.pinDir == "" {
		return nil
	}
	entries, err := os.ReadDir(d.state.pinDir)
	if err != nil {
		return fmt.Errorf("unpin generations: %w", err)
	}
	var errs []error
	for _, e := range entries {
		for name := range d.generationArrays() {
			num, ok := strings.CutPrefix(e.Name(), name+"_gen")
			if !ok {
				continue
			}
			gen, err := strconv.ParseUint(num, 10, 32)
			if err != nil || strconv.FormatUint(gen, 10) != num || !unpin(uint32(gen)) {
				continue
			}
			if err := os.Remove(filepath.Join(d.state.pinDir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("unpin generations: %w", err)
	}
	return nil
}

// unpinOwn removes this generation's pins: those of an Open that failed,
// or of one that never configured an interface, whose programs no entry
// names and so no hook can run.
func (d *Datapath) unpinOwn() error {
	return d.unpinGenerations(func(gen uint32) bool { return gen == d.generation })
}
