package polprog

import (
	"sync"

	"github.com/cilium/ebpf"
	ebpfasm "github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/asm"
)

// haveMayGoto reports whether the kernel accepts may_goto (Linux 6.9),
// which the classifier's loops need. It loads a small SchedCLS program
// with such a loop once; any failure (an older kernel, or no privilege to
// load programs) counts as absent, and the compiler stays linear.
var haveMayGoto = sync.OnceValue(func() bool {
	b := asm.NewBlock()
	b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, 0), ebpfasm.LoadMem(ebpfasm.R2, ebpfasm.R1, 0, ebpfasm.Word))
	b.Label("top")
	b.MayGoto("out")
	b.Jump(ebpfasm.JEq, ebpfasm.R2, 0, "out")
	b.Emit(ebpfasm.Add.Imm(ebpfasm.R2, -1))
	b.Ja("top")
	b.Label("out")
	b.Emit(ebpfasm.Return())
	insns, err := b.Assemble()
	if err != nil {
		return false
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "Dual BSD/GPL", Instructions: insns})
	if err != nil {
		return false
	}
	prog.Close()
	return true
})

// haveMmapArrays reports whether the kernel creates arrays that user space
// can map (BPF_F_MMAPABLE), which Update writes classified runs through. It
// creates and maps a one-entry array once; any failure counts as absent,
// and the compiler stays linear.
var haveMmapArrays = sync.OnceValue(func() bool {
	spec := &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1, Flags: unix.BPF_F_MMAPABLE}
	m, err := ebpf.NewMap(spec)
	if err != nil {
		return false
	}
	defer m.Close()
	mem, err := mapMemory(m)
	if err != nil {
		return false
	}
	return unix.Munmap(mem) == nil
})
