package bpf

// Run through `make generate`, which sets BPF2GO_CC and BPF2GO_STRIP to the
// pinned Debian clang-19 toolchain. bpf2go compiles the C and embeds the
// objects (the TC datapath, connect-time balancing, the stale-socket
// iterator and the XDP pre-DNAT policy hook); abigen then writes abi.go,
// the Go mirror of the shared structs and enums, from the bpfel objects'
// BTF and the headers' comments.
//go:generate go tool bpf2go -target bpfel,bpfeb -no-global-types datapath datapath.c -- -I./include -O2 -mcpu=v3 -Wall -Werror
//go:generate go tool bpf2go -target bpfel,bpfeb -no-global-types sock sock.c -- -I./include -O2 -mcpu=v3 -Wall -Werror
//go:generate go tool bpf2go -target bpfel,bpfeb -no-global-types sockdestroy sockdestroy.c -- -I./include -O2 -mcpu=v3 -Wall -Werror
//go:generate go tool bpf2go -target bpfel,bpfeb -no-global-types xdp xdp.c -- -I./include -O2 -mcpu=v3 -Wall -Werror
//go:generate go run ./internal/abigen -obj datapath_bpfel.o -obj sock_bpfel.o -headers include/sluice -out abi.go -enum sl_policy_rc=PolicyRC:SL_POLICY_:Policy -enum sl_state_flags=StateFlags:SL_STATE_F_:StateFlag:flags -enum sl_cont_slot=ContSlot:SL_CONT_:Cont -enum sl_ct_type=CTType:SL_CT_:CT -enum sl_ct_leg_flags=CTLegFlags:SL_CT_LEG_:CTLeg:flags -enum sl_ct_dir=CTDir:SL_CT_DIR_:CTDir -enum sl_ct_table_slot=CTTableSlot:SL_CT_TABLE_:CTTable -enum sl_iface_flags=IfaceFlags:SL_IFACE_:Iface:flags -enum sl_hook=Hook:SL_HOOK_:Hook -enum sl_reason=Reason:SL_REASON_:Reason -enum sl_route_flags=RouteFlags:SL_ROUTE_:Route:flags -enum sl_family=Family:SL_FAMILY_:Family -enum sl_svc_flags=SvcFlags:SL_SVC_:Svc:flags -struct sl_state=State -struct sl_ipset_key=IPSetKey -struct sl_ipsetm_key=IPSetMKey -struct sl_ipsetm_value=IPSetMValue -struct sl_ct_key=CTKey -struct sl_ct_leg=CTLeg -struct sl_ct_value=CTValue -struct sl_iface_record=IfaceRecord -struct sl_meta=Meta -struct sl_iface=Iface -struct sl_reason_counts=ReasonCounts -struct sl_pending=Pending -struct sl_route_key=RouteKey -struct sl_route=Route -struct sl_svc_key=SvcKey -struct sl_svc=Svc -struct sl_backend_slot_key=BackendSlotKey -struct sl_backend=Backend -struct sl_affinity_key=AffinityKey -struct sl_affinity=Affinity -struct sl_svc_range_key=SvcRangeKey -struct sl_lb_member_key=LBMemberKey -struct sl_lb_member=LBMember -struct sl_maglev_key=MaglevKey -struct sl_maglev_table=MaglevTable -struct sl_snat=SNAT -enum sl_lb_member_flags=LBMemberFlags:SL_LB_MEMBER_:LBMember:flags -enum sl_ct_flags=CTFlags:SL_CT_F_:CTF:flags -struct sl_sock_nat_entry=SockNATEntry -struct sl_sock_nat=SockNAT
