package resource

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
)

// This file saves and rebuilds the configuration of a network namespace:
// links, addresses, routes and a few sysctls (sockets are another matter).
// Unlike the rest of the package it needs no ptrace: it joins the namespace
// through /proc/PID/ns/net on a thread of its own and talks rtnetlink
// there, so the functions here may be called from any goroutine.
//
// Only links that ckpt can create again from their name, MTU and address
// are supported: the loopback device and the devices the kernel creates in
// every namespace (which exist in the fresh one already), and dummy and ifb
// links (configuration-free; this kernel lacks dummy, ifb is its twin).
// Anything else is refused by PreflightNetNamespace before the tree is
// frozen. Addresses and routes that the kernel makes by itself (loopback
// addresses, IPv6 link-local addresses, routes of protocol "kernel") are
// recorded but left to the kernel at restore.

// Limits on what an image may ask for; far above any real namespace.
const (
	maxNetLinks   = 4096
	maxNetAddrs   = 1 << 16
	maxNetRoutes  = 1 << 18
	maxNetMetrics = 64
)

// IFA_PROTO and its values (linux/if_addr.h), newer than x/sys/unix.
const (
	ifaProto        = 11
	ifaProtoKernLo  = 1
	ifaProtoKernRA  = 2
	ifaProtoKernLL  = 3
	rtaNhID         = 30
	infinityLftSecs = 0xffffffff
)

// linkFlagsRestored are the IFF_* flags a user sets and ckpt sets again;
// IFF_UP is applied separately, after every link exists. Others are state
// (RUNNING, LOWER_UP) or counters owned by sockets (PROMISC, ALLMULTI).
const linkFlagsRestored = unix.IFF_NOARP | unix.IFF_MULTICAST

// addrFlagsRestored are the IFA_F_* flags a user can set on an address.
const addrFlagsRestored = unix.IFA_F_NODAD | unix.IFA_F_OPTIMISTIC | unix.IFA_F_HOMEADDRESS |
	unix.IFA_F_MANAGETEMPADDR | unix.IFA_F_NOPREFIXROUTE | unix.IFA_F_MCAUTOJOIN

// netSysctls are the per-namespace sysctls saved and restored; restore
// writes no other name, whatever the image says.
var netSysctls = []string{
	"net/ipv4/ip_forward",
	"net/ipv4/ping_group_range",
	"net/ipv4/ip_local_port_range",
	"net/ipv4/ip_unprivileged_port_start",
	"net/ipv6/conf/all/forwarding",
}

// recreatableKind reports whether ckpt can create a link of this kind.
func recreatableKind(kind string) bool { return kind == "dummy" || kind == "ifb" }

// kernelMadeLink reports whether the kernel creates this link in every new
// network namespace: loopback, and the fallback devices of tunnel drivers.
func kernelMadeLink(kind, name string, arphrd uint32) bool {
	if kind == "" && name == "lo" && arphrd == unix.ARPHRD_LOOPBACK {
		return true
	}
	switch kind + "/" + name {
	case "ipip/tunl0", "gre/gre0", "gretap/gretap0", "erspan/erspan0", "sit/sit0",
		"ip6tnl/ip6tnl0", "ip6gre/ip6gre0", "vti/ip_vti0", "vti6/ip6_vti0":
		return true
	}
	return false
}

// kernelMadeAddr reports whether the kernel adds this address by itself
// (when lo or a link goes up, or from a router advertisement). IFA_PROTO
// says so on kernels since 5.18; before it, the well-known ones are guessed.
func kernelMadeAddr(a *pb.NetAddr, linkName string) bool {
	switch a.Proto {
	case ifaProtoKernLo, ifaProtoKernLL, ifaProtoKernRA:
		return true
	case 0:
	default:
		return false
	}
	if isTemporary(a) {
		return true
	}
	ip, ok := netip.AddrFromSlice(a.Address)
	if !ok {
		return false
	}
	if linkName == "lo" {
		return (ip == netip.MustParseAddr("127.0.0.1") && a.PrefixLen == 8) || (ip == netip.IPv6Loopback() && a.PrefixLen == 128)
	}
	return ip.Is6() && ip.IsLinkLocalUnicast() && a.PrefixLen == 64
}

// isTemporary reports an IPv6 privacy address, which the kernel derives
// from another. (The same bit means "secondary" for IPv4.)
func isTemporary(a *pb.NetAddr) bool {
	return a.Family == unix.AF_INET6 && a.Flags&unix.IFA_F_TEMPORARY != 0
}

// kernelMadeRoute reports whether the kernel makes this route by itself
// (for an address, a router advertisement or a redirect).
func kernelMadeRoute(r *pb.NetRoute) bool {
	switch r.Protocol {
	case unix.RTPROT_KERNEL, unix.RTPROT_RA, unix.RTPROT_REDIRECT:
		return true
	}
	return false
}

// PreflightNetNamespace checks, without changing anything, that ckpt can
// restore the network namespace of pid: every link is of a kind it can
// create, and every route is one it can add. The error names the object
// and says what to do.
func PreflightNetNamespace(pid int) error {
	_, err := DumpNetNamespace(pid)
	return err
}

// DumpNetNamespace reads the configuration of the network namespace of pid.
// The processes in it need not be stopped: it is read in one pass, and a
// dump interrupted by a concurrent change is repeated.
func DumpNetNamespace(pid int) (*pb.NetNamespace, error) {
	var ns *pb.NetNamespace
	err := inNetns(pid, func() error {
		var err error
		ns, err = dumpNetns()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("net namespace of %d: %w", pid, err)
	}
	return ns, nil
}

// dadWait bounds waitDAD. On the links ckpt restores (loopback, and dummy
// and ifb, which do no ARP) duplicate address detection completes as soon
// as the kernel's workqueue runs; a link that really probes takes a second
// or two, and is left to finish on its own.
const dadWait = 2 * time.Second

// waitDAD waits until no IPv6 address of the namespace is tentative, so
// that the restored processes find their addresses usable (bind fails on a
// tentative one) and the kernel's local routes for them in place, as they
// were at checkpoint. The kernel starts duplicate address detection of a
// new address from a workqueue, even where it has nothing to probe, so a
// dump taken right after the addresses were added can still show them
// tentative. Images with a tentative address (a checkpoint taken during
// detection) are not waited for.
func waitDAD(c *rtnl, ns *pb.NetNamespace) error {
	for _, a := range ns.Addrs {
		if a.Flags&unix.IFA_F_TENTATIVE != 0 {
			return nil
		}
	}
	for deadline := time.Now().Add(dadWait); ; time.Sleep(time.Millisecond) {
		msgs, err := c.dump(unix.RTM_GETADDR, make([]byte, unix.SizeofIfAddrmsg))
		if err != nil {
			return fmt.Errorf("list addresses: %w", err)
		}
		tentative := false
		for _, m := range msgs {
			a, err := parseAddr(m)
			if err != nil {
				return fmt.Errorf("list addresses: %w", err)
			}
			tentative = tentative || a.Flags&unix.IFA_F_TENTATIVE != 0
		}
		if !tentative || time.Now().After(deadline) {
			return nil
		}
	}
}

func dumpNetns() (*pb.NetNamespace, error) {
	c, err := dialRtnl()
	if err != nil {
		return nil, err
	}
	defer c.close()
	ns := &pb.NetNamespace{}
	names := map[uint32]string{}

	msgs, err := c.dump(unix.RTM_GETLINK, make([]byte, unix.SizeofIfInfomsg))
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	for _, m := range msgs {
		l, err := parseLink(m)
		if err != nil {
			return nil, fmt.Errorf("list links: %w", err)
		}
		if err := checkLink(l); err != nil {
			return nil, err
		}
		names[l.Index] = l.Name
		ns.Links = append(ns.Links, l)
	}

	msgs, err = c.dump(unix.RTM_GETADDR, make([]byte, unix.SizeofIfAddrmsg))
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	for _, m := range msgs {
		a, err := parseAddr(m)
		if err != nil {
			return nil, fmt.Errorf("list addresses: %w", err)
		}
		if _, ok := names[a.Ifindex]; !ok {
			return nil, fmt.Errorf("address %s on unknown link %d (changed during the dump; try again)", addrString(a), a.Ifindex)
		}
		ns.Addrs = append(ns.Addrs, a)
	}

	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		req := make([]byte, unix.SizeofRtMsg)
		req[0] = fam
		msgs, err = c.dump(unix.RTM_GETROUTE, req)
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		for _, m := range msgs {
			r, unsupported, err := parseRoute(m)
			if err != nil {
				return nil, fmt.Errorf("list routes: %w", err)
			}
			if r == nil || kernelMadeRoute(r) {
				if r != nil {
					ns.Routes = append(ns.Routes, r)
				}
				continue
			}
			if unsupported != "" {
				return nil, fmt.Errorf("route %s uses %s: ckpt cannot restore such routes yet; delete it before checkpointing", routeString(r, names), unsupported)
			}
			if _, ok := names[r.Oif]; r.Oif != 0 && !ok {
				return nil, fmt.Errorf("route %s via unknown link %d (changed during the dump; try again)", routeString(r, names), r.Oif)
			}
			ns.Routes = append(ns.Routes, r)
		}
	}

	for _, name := range netSysctls {
		b, err := os.ReadFile("/proc/sys/" + name)
		if errors.Is(err, os.ErrNotExist) {
			continue // e.g. IPv6 disabled
		}
		if err != nil {
			return nil, fmt.Errorf("read sysctl %s: %w", name, err)
		}
		ns.Sysctls = append(ns.Sysctls, &pb.NetSysctl{Name: name, Value: strings.TrimSuffix(string(b), "\n")})
	}
	return ns, nil
}

// checkLink refuses links ckpt cannot create again.
func checkLink(l *pb.NetLink) error {
	if kernelMadeLink(l.Kind, l.Name, l.Type) || recreatableKind(l.Kind) {
		return nil
	}
	if l.Kind == "" {
		return fmt.Errorf("link %s (index %d) is a physical or kernel device: ckpt can re-create only loopback, dummy and ifb interfaces; move it out of the namespace before checkpointing", l.Name, l.Index)
	}
	return fmt.Errorf("link %s (index %d) is a %s interface: ckpt cannot re-create %s interfaces yet (only dummy and ifb); delete it, or checkpoint a tree without its own network namespace", l.Name, l.Index, l.Kind, l.Kind)
}

func parseLink(m []byte) (*pb.NetLink, error) {
	if len(m) < unix.SizeofIfInfomsg {
		return nil, fmt.Errorf("link message of %d bytes", len(m))
	}
	l := &pb.NetLink{
		Type:  uint32(ne.Uint16(m[2:4])),
		Index: ne.Uint32(m[4:8]),
		Flags: ne.Uint32(m[8:12]),
	}
	attrs, err := parseAttrs(m[unix.SizeofIfInfomsg:])
	if err != nil {
		return nil, fmt.Errorf("link %d: %w", l.Index, err)
	}
	master := uint32(0)
	for _, a := range attrs {
		switch a.typ {
		case unix.IFLA_IFNAME:
			l.Name = a.str()
		case unix.IFLA_MTU:
			l.Mtu, err = a.u32()
		case unix.IFLA_TXQLEN:
			l.Txqlen, err = a.u32()
		case unix.IFLA_ADDRESS:
			l.Hwaddr = a.bytes()
		case unix.IFLA_BROADCAST:
			l.Broadcast = a.bytes()
		case unix.IFLA_IFALIAS:
			l.Alias = a.str()
		case unix.IFLA_MASTER:
			master, err = a.u32()
		case unix.IFLA_LINKINFO:
			var info []nlAttr
			if info, err = parseAttrs(a.val); err == nil {
				for _, i := range info {
					if i.typ == unix.IFLA_INFO_KIND {
						l.Kind = i.str()
					}
				}
			}
		}
		if err != nil {
			return nil, fmt.Errorf("link %d: %w", l.Index, err)
		}
	}
	if master != 0 {
		return nil, fmt.Errorf("link %s (index %d) is a port of link %d: ckpt cannot restore bridge or bond ports yet; detach it before checkpointing", l.Name, l.Index, master)
	}
	return l, nil
}

func parseAddr(m []byte) (*pb.NetAddr, error) {
	if len(m) < unix.SizeofIfAddrmsg {
		return nil, fmt.Errorf("address message of %d bytes", len(m))
	}
	a := &pb.NetAddr{
		Family:       uint32(m[0]),
		PrefixLen:    uint32(m[1]),
		Flags:        uint32(m[2]),
		Scope:        uint32(m[3]),
		Ifindex:      ne.Uint32(m[4:8]),
		ValidLft:     infinityLftSecs,
		PreferredLft: infinityLftSecs,
	}
	attrs, err := parseAttrs(m[unix.SizeofIfAddrmsg:])
	if err != nil {
		return nil, fmt.Errorf("address on link %d: %w", a.Ifindex, err)
	}
	for _, at := range attrs {
		var v uint8
		switch at.typ {
		case unix.IFA_ADDRESS:
			a.Address = at.bytes()
		case unix.IFA_LOCAL:
			a.Local = at.bytes()
		case unix.IFA_BROADCAST:
			a.Broadcast = at.bytes()
		case unix.IFA_LABEL:
			a.Label = at.str()
		case unix.IFA_FLAGS:
			a.Flags, err = at.u32()
		case unix.IFA_RT_PRIORITY:
			a.RtPriority, err = at.u32()
		case ifaProto:
			v, err = at.u8()
			a.Proto = uint32(v)
		case unix.IFA_CACHEINFO:
			if len(at.val) < unix.SizeofIfaCacheinfo {
				err = fmt.Errorf("address cacheinfo of %d bytes", len(at.val))
				break
			}
			a.PreferredLft = ne.Uint32(at.val[0:4])
			a.ValidLft = ne.Uint32(at.val[4:8])
		}
		if err != nil {
			return nil, fmt.Errorf("address on link %d: %w", a.Ifindex, err)
		}
	}
	return a, nil
}

// parseRoute reads a route message. It returns a nil route for cached
// clones, which are not configuration, and names in unsupported the first
// attribute ckpt could not restore.
func parseRoute(m []byte) (r *pb.NetRoute, unsupported string, err error) {
	if len(m) < unix.SizeofRtMsg {
		return nil, "", fmt.Errorf("route message of %d bytes", len(m))
	}
	r = &pb.NetRoute{
		Family:   uint32(m[0]),
		DstLen:   uint32(m[1]),
		SrcLen:   uint32(m[2]),
		Tos:      uint32(m[3]),
		Table:    uint32(m[4]),
		Protocol: uint32(m[5]),
		Scope:    uint32(m[6]),
		Type:     uint32(m[7]),
		Flags:    ne.Uint32(m[8:12]),
	}
	if r.Flags&unix.RTM_F_CLONED != 0 {
		return nil, "", nil
	}
	attrs, err := parseAttrs(m[unix.SizeofRtMsg:])
	if err != nil {
		return nil, "", fmt.Errorf("route: %w", err)
	}
	note := func(what string) {
		if unsupported == "" {
			unsupported = what
		}
	}
	for _, a := range attrs {
		var v uint8
		switch a.typ {
		case unix.RTA_TABLE:
			r.Table, err = a.u32()
		case unix.RTA_DST:
			r.Dst = a.bytes()
		case unix.RTA_SRC:
			r.Src = a.bytes()
		case unix.RTA_GATEWAY:
			r.Gateway = a.bytes()
		case unix.RTA_PREFSRC:
			r.Prefsrc = a.bytes()
		case unix.RTA_OIF:
			r.Oif, err = a.u32()
		case unix.RTA_PRIORITY:
			r.Priority, err = a.u32()
		case unix.RTA_PREF:
			v, err = a.u8()
			r.Pref = uint32(v)
		case unix.RTA_METRICS:
			var ms []nlAttr
			if ms, err = parseAttrs(a.val); err != nil {
				break
			}
			for _, mt := range ms {
				if mt.typ == unix.RTAX_CC_ALGO {
					note("a congestion control metric")
					continue
				}
				val, err := mt.u32()
				if err != nil {
					return nil, "", fmt.Errorf("route metric: %w", err)
				}
				r.Metrics = append(r.Metrics, &pb.NetMetric{Type: uint32(mt.typ), Value: val})
			}
		case unix.RTA_CACHEINFO:
			// struct rta_cacheinfo: clntref, lastuse, expires (clock ticks
			// of USER_HZ = 100), error, used, id, ts, tsage.
			if len(a.val) >= 12 {
				if t := int32(ne.Uint32(a.val[8:12])); t > 0 {
					r.Expires = uint32((int64(t) + 99) / 100)
				}
			}
		case unix.RTA_MULTIPATH:
			note("several next hops")
		case unix.RTA_VIA:
			note("a next hop of another address family")
		case unix.RTA_ENCAP, unix.RTA_ENCAP_TYPE:
			note("encapsulation")
		case unix.RTA_NEWDST:
			note("MPLS")
		case rtaNhID:
			note("a nexthop object")
		case unix.RTA_FLOW:
			note("a realm")
		}
		if err != nil {
			return nil, "", fmt.Errorf("route: %w", err)
		}
	}
	return r, unsupported, nil
}

// RestoreNetNamespace gives the network namespace of pid the configuration
// ns: sysctls, then links (same names, indexes when the kernel grants
// them, MTU, hardware address), links up as recorded, addresses, routes.
//
// Preconditions:
//   - the namespace is fresh: it holds only the links the kernel creates
//     in every namespace (anything else is refused);
//   - it is not ckpt's own namespace (refused);
//   - no restored process has been released yet, so none can observe a
//     half-configured namespace.
func RestoreNetNamespace(pid int, ns *pb.NetNamespace) error {
	if err := validateNetns(ns); err != nil {
		return fmt.Errorf("restore net namespace of %d: image: %w", pid, err)
	}
	var target, own unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &target); err != nil {
		return fmt.Errorf("restore net namespace of %d: %w", pid, err)
	}
	if err := unix.Stat("/proc/self/ns/net", &own); err != nil {
		return fmt.Errorf("restore net namespace of %d: %w", pid, err)
	}
	if target.Dev == own.Dev && target.Ino == own.Ino {
		return fmt.Errorf("restore net namespace of %d: it is ckpt's own namespace, not a fresh one", pid)
	}
	if err := inNetns(pid, func() error { return restoreNetns(ns) }); err != nil {
		return fmt.Errorf("restore net namespace of %d: %w", pid, err)
	}
	return nil
}

// validateNetns checks everything restore relies on in an untrusted image.
func validateNetns(ns *pb.NetNamespace) error {
	if ns == nil {
		return errors.New("no namespace")
	}
	if len(ns.Links) > maxNetLinks || len(ns.Addrs) > maxNetAddrs || len(ns.Routes) > maxNetRoutes {
		return fmt.Errorf("%d links, %d addresses, %d routes: too many", len(ns.Links), len(ns.Addrs), len(ns.Routes))
	}
	byIndex := map[uint32]*pb.NetLink{}
	names := map[string]bool{}
	for _, l := range ns.Links {
		if l.Index == 0 || l.Index > 1<<30 || byIndex[l.Index] != nil {
			return fmt.Errorf("link %q: bad or repeated index %d", l.Name, l.Index)
		}
		if l.Name == "" || len(l.Name) >= unix.IFNAMSIZ || names[l.Name] || strings.ContainsAny(l.Name, "/:\x00 \t\n") || l.Name == "." || l.Name == ".." {
			return fmt.Errorf("link %d: bad or repeated name %q", l.Index, l.Name)
		}
		if err := checkLink(l); err != nil {
			return err
		}
		if len(l.Hwaddr) > 32 || len(l.Broadcast) > 32 || len(l.Alias) > 255 {
			return fmt.Errorf("link %s: address or alias too long", l.Name)
		}
		byIndex[l.Index], names[l.Name] = l, true
	}
	for _, a := range ns.Addrs {
		l := byIndex[a.Ifindex]
		if l == nil {
			return fmt.Errorf("address on unknown link %d", a.Ifindex)
		}
		n := ipLen(a.Family)
		if n == 0 || len(a.Address) != n || (len(a.Local) != 0 && len(a.Local) != n) ||
			(len(a.Broadcast) != 0 && len(a.Broadcast) != 4) || int(a.PrefixLen) > 8*n || a.Scope > 255 {
			return fmt.Errorf("address %s on %s: bad family, length or prefix", addrString(a), l.Name)
		}
		if len(a.Label) >= unix.IFNAMSIZ || strings.Contains(a.Label, "\x00") {
			return fmt.Errorf("address %s on %s: bad label %q", addrString(a), l.Name, a.Label)
		}
	}
	for _, r := range ns.Routes {
		if kernelMadeRoute(r) {
			continue
		}
		n := ipLen(r.Family)
		bad := n == 0 || int(r.DstLen) > 8*n || int(r.SrcLen) > 8*n || r.Tos > 255 || r.Scope > 255 || r.Type > 255 ||
			r.Protocol > 255 || r.Pref > 255 || len(r.Metrics) > maxNetMetrics
		for _, b := range [][]byte{r.Dst, r.Src, r.Gateway, r.Prefsrc} {
			bad = bad || (len(b) != 0 && len(b) != n)
		}
		if r.Oif != 0 && byIndex[r.Oif] == nil {
			bad = true
		}
		for _, m := range r.Metrics {
			bad = bad || m.Type == 0 || m.Type > unix.RTAX_MAX || m.Type == unix.RTAX_CC_ALGO
		}
		if bad {
			return fmt.Errorf("route %s: bad family, lengths, link or metrics", routeString(r, nil))
		}
	}
	for _, s := range ns.Sysctls {
		if !slices.Contains(netSysctls, s.Name) {
			return fmt.Errorf("sysctl %q is not one ckpt restores", s.Name)
		}
		if len(s.Value) > 256 || strings.ContainsAny(s.Value, "\x00\n") {
			return fmt.Errorf("sysctl %s: bad value %q", s.Name, s.Value)
		}
	}
	return nil
}

func ipLen(family uint32) int {
	switch family {
	case unix.AF_INET:
		return 4
	case unix.AF_INET6:
		return 16
	}
	return 0
}

func restoreNetns(ns *pb.NetNamespace) error {
	c, err := dialRtnl()
	if err != nil {
		return err
	}
	defer c.close()

	existing, err := currentLinks(c)
	if err != nil {
		return err
	}
	for _, l := range existing {
		if !kernelMadeLink(l.Kind, l.Name, l.Type) {
			return fmt.Errorf("namespace is not fresh: it already has link %s (%s)", l.Name, l.Kind)
		}
	}

	// Sysctls first: forwarding settings are copied into links as they
	// are created.
	for _, s := range ns.Sysctls {
		if err := os.WriteFile("/proc/sys/"+s.Name, []byte(s.Value+"\n"), 0); err != nil {
			return fmt.Errorf("sysctl %s = %q: %w", s.Name, s.Value, err)
		}
	}

	// Links, lowest index first, so requested indexes are granted in the
	// order the kernel first gave them.
	links := slices.Clone(ns.Links)
	slices.SortFunc(links, func(a, b *pb.NetLink) int { return int(a.Index) - int(b.Index) })
	for _, l := range links {
		if kernelMadeLink(l.Kind, l.Name, l.Type) {
			have := existing[l.Name]
			if have == nil {
				return fmt.Errorf("link %s (%s): this kernel does not create it in new namespaces", l.Name, kindName(l.Kind))
			}
			if err := configureLink(c, have, l); err != nil {
				return err
			}
			// lo goes up first, so that the kernel's 127.0.0.1 stays the
			// primary address in front of any added 127.x address.
			if l.Flags&unix.IFF_UP != 0 && l.Name == "lo" {
				if err := setLinkUp(c, have.Index); err != nil {
					return fmt.Errorf("link lo up: %w", err)
				}
			}
			continue
		}
		if err := createLink(c, l); err != nil {
			return err
		}
	}

	// Map image indexes to the links now present, by name.
	now, err := currentLinks(c)
	if err != nil {
		return err
	}
	index := map[uint32]uint32{}
	names := map[uint32]string{}
	for _, l := range links {
		have := now[l.Name]
		if have == nil {
			return fmt.Errorf("link %s vanished during restore", l.Name)
		}
		index[l.Index], names[l.Index] = have.Index, l.Name
	}

	// Links go up before addresses are added: the kernel then makes its own
	// addresses (IPv6 link-local from the restored hardware address) first,
	// exactly as the originals were made.
	for _, l := range links {
		if l.Flags&unix.IFF_UP != 0 && l.Name != "lo" {
			if err := setLinkUp(c, index[l.Index]); err != nil {
				return fmt.Errorf("link %s up: %w", l.Name, err)
			}
		}
	}

	// IPv4 primaries before secondaries, which the kernel marks as such
	// only when a primary of the same subnet exists.
	addrs := slices.Clone(ns.Addrs)
	slices.SortStableFunc(addrs, func(a, b *pb.NetAddr) int {
		return int(a.Flags&unix.IFA_F_SECONDARY) - int(b.Flags&unix.IFA_F_SECONDARY)
	})
	for _, a := range addrs {
		if err := addAddr(c, a, index[a.Ifindex], names[a.Ifindex]); err != nil {
			return fmt.Errorf("address %s on %s: %w", addrString(a), names[a.Ifindex], err)
		}
	}
	if err := waitDAD(c, ns); err != nil {
		return err
	}

	// Routes: a gateway may be reachable only through another restored
	// route, so retry the failures while that makes progress.
	var todo []*pb.NetRoute
	for _, r := range ns.Routes {
		if !kernelMadeRoute(r) {
			todo = append(todo, r)
		}
	}
	for len(todo) > 0 {
		var failed []*pb.NetRoute
		var firstErr error
		for _, r := range todo {
			if err := addRoute(c, r, index); err != nil {
				failed = append(failed, r)
				if firstErr == nil {
					firstErr = fmt.Errorf("route %s: %w", routeString(r, names), err)
				}
			}
		}
		if len(failed) == len(todo) {
			return firstErr
		}
		todo = failed
	}
	return nil
}

func kindName(kind string) string {
	if kind == "" {
		return "loopback"
	}
	return kind
}

// currentLinks lists the namespace's links by name.
func currentLinks(c *rtnl) (map[string]*pb.NetLink, error) {
	msgs, err := c.dump(unix.RTM_GETLINK, make([]byte, unix.SizeofIfInfomsg))
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	out := map[string]*pb.NetLink{}
	for _, m := range msgs {
		l, err := parseLink(m)
		if err != nil {
			return nil, fmt.Errorf("list links: %w", err)
		}
		out[l.Name] = l
	}
	return out, nil
}

func ifinfomsg(index, flags, change uint32) *nlMsg {
	m := &nlMsg{b: make([]byte, unix.SizeofIfInfomsg)}
	ne.PutUint32(m.b[4:], index)
	ne.PutUint32(m.b[8:], flags)
	ne.PutUint32(m.b[12:], change)
	return m
}

func createLink(c *rtnl, l *pb.NetLink) error {
	build := func(index uint32) []byte {
		m := ifinfomsg(index, l.Flags&linkFlagsRestored, linkFlagsRestored)
		m.str(unix.IFLA_IFNAME, l.Name)
		if l.Mtu != 0 {
			m.u32(unix.IFLA_MTU, l.Mtu)
		}
		m.u32(unix.IFLA_TXQLEN, l.Txqlen)
		if len(l.Hwaddr) != 0 {
			m.attr(unix.IFLA_ADDRESS, l.Hwaddr)
		}
		if len(l.Broadcast) != 0 {
			m.attr(unix.IFLA_BROADCAST, l.Broadcast)
		}
		m.nest(unix.IFLA_LINKINFO, func() { m.str(unix.IFLA_INFO_KIND, l.Kind) })
		return m.b
	}
	err := c.do(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL, build(l.Index))
	if errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST) {
		// The index is taken (a kernel-made link of this kernel has it):
		// the link keeps its name and takes whatever index comes.
		if c.do(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL, build(0)) == nil {
			err = nil
		}
	}
	if err != nil {
		return fmt.Errorf("create %s link %s: %w", l.Kind, l.Name, err)
	}
	if l.Alias != "" {
		m := ifinfomsg(0, 0, 0)
		m.str(unix.IFLA_IFNAME, l.Name)
		m.str(unix.IFLA_IFALIAS, l.Alias)
		if err := c.do(unix.RTM_NEWLINK, 0, m.b); err != nil {
			return fmt.Errorf("link %s alias: %w", l.Name, err)
		}
	}
	return nil
}

// configureLink gives an existing (kernel-made) link the recorded MTU,
// queue length, flags and alias, where they differ.
func configureLink(c *rtnl, have, want *pb.NetLink) error {
	m := ifinfomsg(have.Index, want.Flags&linkFlagsRestored, linkFlagsRestored)
	if want.Mtu != 0 && want.Mtu != have.Mtu {
		m.u32(unix.IFLA_MTU, want.Mtu)
	}
	if want.Txqlen != have.Txqlen {
		m.u32(unix.IFLA_TXQLEN, want.Txqlen)
	}
	if want.Alias != have.Alias {
		m.str(unix.IFLA_IFALIAS, want.Alias)
	}
	if err := c.do(unix.RTM_NEWLINK, 0, m.b); err != nil {
		return fmt.Errorf("configure link %s: %w", want.Name, err)
	}
	return nil
}

func setLinkUp(c *rtnl, index uint32) error {
	return c.do(unix.RTM_NEWLINK, 0, ifinfomsg(index, unix.IFF_UP, unix.IFF_UP).b)
}

func addAddr(c *rtnl, a *pb.NetAddr, index uint32, linkName string) error {
	if a.Proto == ifaProtoKernRA || isTemporary(a) {
		return nil // autoconfiguration from a router, which the new namespace has yet to hear from
	}
	m := &nlMsg{b: []byte{uint8(a.Family), uint8(a.PrefixLen), uint8(a.Flags & addrFlagsRestored), uint8(a.Scope), 0, 0, 0, 0}}
	ne.PutUint32(m.b[4:], index)
	if len(a.Local) != 0 {
		m.attr(unix.IFA_LOCAL, a.Local)
	}
	m.attr(unix.IFA_ADDRESS, a.Address)
	if len(a.Broadcast) != 0 {
		m.attr(unix.IFA_BROADCAST, a.Broadcast)
	}
	if a.Label != "" && a.Family == unix.AF_INET {
		m.str(unix.IFA_LABEL, a.Label)
	}
	m.u32(unix.IFA_FLAGS, a.Flags&addrFlagsRestored)
	if a.ValidLft != infinityLftSecs || a.PreferredLft != infinityLftSecs {
		ci := make([]byte, unix.SizeofIfaCacheinfo)
		ne.PutUint32(ci[0:], a.PreferredLft)
		ne.PutUint32(ci[4:], a.ValidLft)
		m.attr(unix.IFA_CACHEINFO, ci)
	}
	if a.Proto != 0 {
		m.u8(ifaProto, uint8(a.Proto))
	}
	if a.RtPriority != 0 {
		m.u32(unix.IFA_RT_PRIORITY, a.RtPriority)
	}
	err := c.do(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, m.b)
	if errors.Is(err, unix.EEXIST) && kernelMadeAddr(a, linkName) {
		return nil // the kernel made it again when the link went up
	}
	return err
}

func addRoute(c *rtnl, r *pb.NetRoute, index map[uint32]uint32) error {
	table := uint8(r.Table)
	if r.Table > 255 {
		table = unix.RT_TABLE_COMPAT
	}
	m := &nlMsg{b: []byte{uint8(r.Family), uint8(r.DstLen), uint8(r.SrcLen), uint8(r.Tos),
		table, uint8(r.Protocol), uint8(r.Scope), uint8(r.Type)}}
	m.b = ne.AppendUint32(m.b, r.Flags&unix.RTNH_F_ONLINK)
	m.u32(unix.RTA_TABLE, r.Table)
	for _, a := range []struct {
		typ uint16
		val []byte
	}{{unix.RTA_DST, r.Dst}, {unix.RTA_SRC, r.Src}, {unix.RTA_GATEWAY, r.Gateway}, {unix.RTA_PREFSRC, r.Prefsrc}} {
		if len(a.val) != 0 {
			m.attr(a.typ, a.val)
		}
	}
	if r.Oif != 0 {
		m.u32(unix.RTA_OIF, index[r.Oif])
	}
	if r.Priority != 0 {
		m.u32(unix.RTA_PRIORITY, r.Priority)
	}
	if r.Family == unix.AF_INET6 {
		m.u8(unix.RTA_PREF, uint8(r.Pref))
		if r.Expires != 0 {
			m.u32(unix.RTA_EXPIRES, r.Expires)
		}
	}
	if len(r.Metrics) != 0 {
		m.nest(unix.RTA_METRICS, func() {
			for _, mt := range r.Metrics {
				m.u32(uint16(mt.Type), mt.Value)
			}
		})
	}
	return c.do(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, m.b)
}

// inNetns runs f on an OS thread that has joined the network namespace of
// pid (see inNamespace).
func inNetns(pid int, f func() error) error { return inNamespace(pid, "net", f) }

func addrString(a *pb.NetAddr) string {
	b := a.Address
	if a.Family == unix.AF_INET && len(a.Local) != 0 {
		b = a.Local // Address is the peer
	}
	ip, ok := netip.AddrFromSlice(b)
	if !ok {
		return fmt.Sprintf("<%d bytes>/%d", len(a.Address), a.PrefixLen)
	}
	return fmt.Sprintf("%s/%d", ip, a.PrefixLen)
}

// routeString names a route the way `ip route` would, roughly.
func routeString(r *pb.NetRoute, names map[uint32]string) string {
	dst := "default"
	if ip, ok := netip.AddrFromSlice(r.Dst); ok {
		dst = fmt.Sprintf("%s/%d", ip, r.DstLen)
	} else if r.DstLen != 0 {
		dst = fmt.Sprintf("<%d bytes>/%d", len(r.Dst), r.DstLen)
	}
	s := dst
	if ip, ok := netip.AddrFromSlice(r.Gateway); ok {
		s += " via " + ip.String()
	}
	if r.Oif != 0 {
		if n, ok := names[r.Oif]; ok {
			s += " dev " + n
		} else {
			s += fmt.Sprintf(" dev #%d", r.Oif)
		}
	}
	if r.Table != unix.RT_TABLE_MAIN {
		s += fmt.Sprintf(" table %d", r.Table)
	}
	return s
}

// DescribeNetNamespace renders a namespace record for `ckpt inspect`, one
// line per link, address and restored route (kernel-made routes are left
// out; they come back with their addresses).
func DescribeNetNamespace(ns *pb.NetNamespace) []string {
	names := map[uint32]string{}
	for _, l := range ns.Links {
		names[l.Index] = l.Name
	}
	out := []string{fmt.Sprintf("net namespace %d: %d links, %d addresses, %d routes", ns.Id, len(ns.Links), len(ns.Addrs), len(ns.Routes))}
	for _, l := range ns.Links {
		state := "down"
		if l.Flags&unix.IFF_UP != 0 {
			state = "up"
		}
		out = append(out, fmt.Sprintf("  link %d %s (%s) %s mtu %d", l.Index, l.Name, kindName(l.Kind), state, l.Mtu))
	}
	for _, a := range ns.Addrs {
		out = append(out, fmt.Sprintf("  addr %s dev %s", addrString(a), names[a.Ifindex]))
	}
	for _, r := range ns.Routes {
		if !kernelMadeRoute(r) {
			out = append(out, "  route "+routeString(r, names))
		}
	}
	for _, s := range ns.Sysctls {
		out = append(out, fmt.Sprintf("  sysctl %s = %q", s.Name, s.Value))
	}
	return out
}
