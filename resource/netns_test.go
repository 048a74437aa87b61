package resource

import (
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	"github.com/ckpt/ckpt/image/pb"
)

// The tests here build network namespaces with iproute2 (an implementation
// independent of ours) inside processes they start with CLONE_NEWNET; the
// namespaces, and every link in them, die with those processes.

func needNetTools(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for _, tool := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (scripts/deps.sh installs it)", tool)
		}
	}
}

// netnsProcess starts a process in a new network namespace; it is killed
// and reaped when the test ends, and its namespace goes with it.
func netnsProcess(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd.Process.Pid
}

// inNs runs a command inside the network namespace of pid.
func inNs(t *testing.T, pid int, args ...string) string {
	t.Helper()
	out, err := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(pid), "-n"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// linkKind is the configuration-free link kind this kernel has: dummy, or
// ifb where dummy is not built in.
func linkKind(t *testing.T, pid int) string {
	for _, kind := range []string{"dummy", "ifb"} {
		if exec.Command("nsenter", "-t", strconv.Itoa(pid), "-n", "ip", "link", "add", "probe0", "type", kind).Run() == nil {
			inNs(t, pid, "ip", "link", "del", "probe0")
			return kind
		}
	}
	t.Skip("kernel has neither dummy nor ifb links")
	return ""
}

func TestNetNamespaceDumpRestore(t *testing.T) {
	needNetTools(t)
	src := netnsProcess(t)
	kind := linkKind(t, src)
	for _, c := range [][]string{
		{"link", "set", "lo", "up"},
		{"addr", "add", "127.0.0.2/8", "dev", "lo"},
		{"link", "add", "dummy0", "type", kind},
		{"link", "set", "dummy0", "mtu", "1400", "alias", "test link"},
		{"addr", "add", "10.1.2.3/24", "dev", "dummy0"},
		{"addr", "add", "10.1.2.4/24", "dev", "dummy0"}, // secondary
		{"addr", "add", "fd00::1/64", "dev", "dummy0"},
		{"addr", "add", "10.3.0.1/24", "dev", "dummy0", "valid_lft", "1000", "preferred_lft", "500"},
		{"link", "set", "dummy0", "up"},
		// A gap in the indexes: dummy1 keeps its index only if restore asks for it.
		{"link", "add", "gap0", "type", kind},
		{"link", "add", "dummy1", "type", kind},
		{"link", "del", "gap0"},
		{"addr", "add", "10.5.0.1/16", "dev", "dummy1"},
		{"addr", "add", "fd05::1/64", "dev", "dummy1"},
		{"route", "add", "10.9.0.0/16", "dev", "dummy0"},
		{"route", "add", "10.7.0.0/16", "via", "10.1.2.254"},
		{"route", "add", "10.6.0.0/16", "via", "10.7.0.1", "onlink", "dev", "dummy0", "table", "100"},
		{"route", "add", "blackhole", "10.8.0.0/16", "metric", "7"},
		{"-6", "route", "add", "fd01::/64", "dev", "dummy0", "metric", "100"},
		{"-6", "route", "add", "fd02::/64", "via", "fd00::2", "mtu", "1280"},
	} {
		inNs(t, src, append([]string{"ip"}, c...)...)
	}
	inNs(t, src, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward && echo '0 2147483647' > /proc/sys/net/ipv4/ping_group_range")

	if err := PreflightNetNamespace(src); err != nil {
		t.Fatalf("preflight: %v", err)
	}
	want, err := DumpNetNamespace(src)
	if err != nil {
		t.Fatal(err)
	}
	// The image is untrusted: restore from what a reader would get.
	b, err := proto.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	img := &pb.NetNamespace{}
	if err := proto.Unmarshal(b, img); err != nil {
		t.Fatal(err)
	}

	dst := netnsProcess(t)
	if err := RestoreNetNamespace(dst, img); err != nil {
		t.Fatal(err)
	}
	got, err := DumpNetNamespace(dst)
	if err != nil {
		t.Fatal(err)
	}
	normalizeNetns(t, want, got)
	if !proto.Equal(want, got) {
		t.Errorf("restored namespace differs:\nwant %s\ngot  %s", prototext.Format(want), prototext.Format(got))
	}
	if w, g := findLink(want, "dummy1"), findLink(got, "dummy1"); g == nil || g.Index != w.Index {
		t.Errorf("dummy1 restored as %v, want index %d", g, w.Index)
	}
	if !slices.ContainsFunc(got.Sysctls, func(s *pb.NetSysctl) bool { return s.Name == "net/ipv4/ip_forward" && s.Value == "1" }) {
		t.Errorf("ip_forward not restored: %v", got.Sysctls)
	}

	desc := strings.Join(DescribeNetNamespace(got), "\n")
	for _, line := range []string{"dummy0 (" + kind + ") up mtu 1400", "addr 127.0.0.2/8 dev lo", "route 10.6.0.0/16 via 10.7.0.1 dev dummy0 table 100"} {
		if !strings.Contains(desc, line) {
			t.Errorf("description lacks %q:\n%s", line, desc)
		}
	}

	// What iproute2 shows, inside both namespaces.
	for _, c := range [][]string{
		{"-o", "link", "show"},
		{"-o", "addr", "show"},
		{"route", "show", "table", "all"},
		{"-6", "route", "show", "table", "all"},
	} {
		w, g := ipLines(t, src, c), ipLines(t, dst, c)
		if w != g {
			t.Errorf("ip %s:\noriginal:\n%s\nrestored:\n%s", strings.Join(c, " "), w, g)
		}
	}

	// A second restore into the same namespace is refused, naming a link.
	if err := RestoreNetNamespace(dst, img); err == nil || !strings.Contains(err.Error(), "not fresh") {
		t.Errorf("restore into a configured namespace: %v, want a 'not fresh' error", err)
	}
	// So is a restore into ckpt's own namespace.
	if err := RestoreNetNamespace(os.Getpid(), img); err == nil || !strings.Contains(err.Error(), "own namespace") {
		t.Errorf("restore into our own namespace: %v, want it refused", err)
	}
}

var secondsRe = regexp.MustCompile(`[0-9]+sec`)

// ipLines runs ip in a namespace and returns its output with lifetimes
// blurred and lines sorted (the order of addresses made by the kernel and
// by restore may differ).
func ipLines(t *testing.T, pid int, args []string) string {
	out := inNs(t, pid, append([]string{"ip"}, args...)...)
	lines := strings.Split(strings.TrimSpace(secondsRe.ReplaceAllString(out, "Nsec")), "\n")
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func findLink(ns *pb.NetNamespace, name string) *pb.NetLink {
	for _, l := range ns.Links {
		if l.Name == name {
			return l
		}
	}
	return nil
}

// normalizeNetns makes two dumps comparable: remaining lifetimes are checked
// to be close, then cleared; addresses and routes are sorted.
func normalizeNetns(t *testing.T, a, b *pb.NetNamespace) {
	t.Helper()
	for _, ns := range []*pb.NetNamespace{a, b} {
		slices.SortFunc(ns.Addrs, func(x, y *pb.NetAddr) int { return strings.Compare(prototext.Format(x), prototext.Format(y)) })
		slices.SortFunc(ns.Routes, func(x, y *pb.NetRoute) int { return strings.Compare(prototext.Format(x), prototext.Format(y)) })
	}
	finite := 0
	for i, x := range a.Addrs {
		if i >= len(b.Addrs) {
			break
		}
		y := b.Addrs[i]
		if x.ValidLft == infinityLftSecs && x.PreferredLft == infinityLftSecs {
			continue
		}
		finite++
		if d := int64(x.ValidLft) - int64(y.ValidLft); d < 0 || d > 10 {
			t.Errorf("address %s: valid lifetime %d after restore, %d before", addrString(x), y.ValidLft, x.ValidLft)
		}
		if d := int64(x.PreferredLft) - int64(y.PreferredLft); d < 0 || d > 10 {
			t.Errorf("address %s: preferred lifetime %d after restore, %d before", addrString(x), y.PreferredLft, x.PreferredLft)
		}
		x.ValidLft, x.PreferredLft, y.ValidLft, y.PreferredLft = 0, 0, 0, 0
	}
	if finite == 0 {
		t.Error("no address with a finite lifetime in the dump")
	}
}

func TestNetNamespacePreflightRefusesVeth(t *testing.T) {
	needNetTools(t)
	pid := netnsProcess(t)
	inNs(t, pid, "ip", "link", "add", "vtest0", "type", "veth", "peer", "name", "vtest1")
	err := PreflightNetNamespace(pid)
	if err == nil {
		t.Fatal("preflight accepted a namespace with a veth pair")
	}
	msg := err.Error()
	if !strings.Contains(msg, "veth") || !(strings.Contains(msg, "link vtest0") || strings.Contains(msg, "link vtest1")) {
		t.Errorf("error does not name the interface and its kind: %v", err)
	}
}

func TestNetNamespaceRestoreRefusesBadImages(t *testing.T) {
	needNetTools(t)
	lo := &pb.NetLink{Index: 1, Name: "lo", Type: unix.ARPHRD_LOOPBACK, Flags: unix.IFF_UP | unix.IFF_LOOPBACK, Mtu: 65536}
	d := &pb.NetLink{Index: 2, Name: "d0", Kind: "ifb", Type: unix.ARPHRD_ETHER, Mtu: 1500}
	addr := &pb.NetAddr{Ifindex: 2, Family: unix.AF_INET, PrefixLen: 24, Address: []byte{10, 0, 0, 1}, Local: []byte{10, 0, 0, 1}}
	for name, ns := range map[string]*pb.NetNamespace{
		"veth link":       {Links: []*pb.NetLink{lo, {Index: 2, Name: "v0", Kind: "veth"}}},
		"repeated index":  {Links: []*pb.NetLink{lo, {Index: 1, Name: "d0", Kind: "ifb"}}},
		"long name":       {Links: []*pb.NetLink{lo, {Index: 2, Name: "a-very-long-name0", Kind: "ifb"}}},
		"name with slash": {Links: []*pb.NetLink{lo, {Index: 2, Name: "a/b", Kind: "ifb"}}},
		"address length":  {Links: []*pb.NetLink{lo, d}, Addrs: []*pb.NetAddr{{Ifindex: 2, Family: unix.AF_INET, PrefixLen: 24, Address: []byte{10, 0, 0}}}},
		"prefix length":   {Links: []*pb.NetLink{lo, d}, Addrs: []*pb.NetAddr{{Ifindex: 2, Family: unix.AF_INET, PrefixLen: 33, Address: []byte{10, 0, 0, 1}}}},
		"unknown link":    {Links: []*pb.NetLink{lo, d}, Addrs: []*pb.NetAddr{{Ifindex: 9, Family: unix.AF_INET, PrefixLen: 24, Address: []byte{10, 0, 0, 1}}}},
		"route oif":       {Links: []*pb.NetLink{lo, d}, Addrs: []*pb.NetAddr{addr}, Routes: []*pb.NetRoute{{Family: unix.AF_INET, Table: 254, Oif: 7, DstLen: 8, Dst: []byte{11, 0, 0, 0}}}},
		"route metric":    {Links: []*pb.NetLink{lo, d}, Routes: []*pb.NetRoute{{Family: unix.AF_INET, Table: 254, Metrics: []*pb.NetMetric{{Type: 999, Value: 1}}}}},
		"sysctl name":     {Links: []*pb.NetLink{lo}, Sysctls: []*pb.NetSysctl{{Name: "kernel/hostname", Value: "x"}}},
		"sysctl escape":   {Links: []*pb.NetLink{lo}, Sysctls: []*pb.NetSysctl{{Name: "net/ipv4/../../kernel/hostname", Value: "x"}}},
	} {
		pid := netnsProcess(t)
		err := RestoreNetNamespace(pid, ns)
		if err == nil {
			t.Errorf("%s: restore accepted the image", name)
			continue
		}
		// Nothing may have been created.
		if out := inNs(t, pid, "ip", "-o", "link", "show"); strings.Count(out, "\n") != 1 {
			t.Errorf("%s: refused (%v) but the namespace changed:\n%s", name, err, out)
		}
	}
}

// Netlink answers are parsed with every length checked: damaged input is an
// error, never a panic or a read past the message.
func TestNetlinkParsersRejectDamagedInput(t *testing.T) {
	good := &nlMsg{}
	good.str(unix.IFLA_IFNAME, "x")
	good.nest(unix.IFLA_LINKINFO, func() { good.str(unix.IFLA_INFO_KIND, "ifb") })
	if attrs, err := parseAttrs(good.b); err != nil || len(attrs) != 2 {
		t.Fatalf("parseAttrs(well-formed) = %v, %v", attrs, err)
	}
	for name, b := range map[string][]byte{
		"truncated header": {8, 0},
		"length below 4":   {2, 0, 1, 0},
		"length past end":  {9, 0, 1, 0, 'x', 0},
		"second truncated": append(slices.Clone(good.b), 12, 0, 3, 0, 'a'),
	} {
		if _, err := parseAttrs(b); err == nil {
			t.Errorf("parseAttrs(%s) accepted %v", name, b)
		}
	}
	if _, err := parseLink(make([]byte, unix.SizeofIfInfomsg-1)); err == nil {
		t.Error("parseLink accepted a short message")
	}
	if _, err := parseAddr(make([]byte, unix.SizeofIfAddrmsg-1)); err == nil {
		t.Error("parseAddr accepted a short message")
	}
	if _, _, err := parseRoute(make([]byte, unix.SizeofRtMsg-1)); err == nil {
		t.Error("parseRoute accepted a short message")
	}
	// A u32 attribute with fewer than 4 bytes.
	m := &nlMsg{b: make([]byte, unix.SizeofIfInfomsg)}
	m.attr(unix.IFLA_MTU, []byte{1, 2})
	if _, err := parseLink(m.b); err == nil {
		t.Error("parseLink accepted a 2-byte MTU")
	}
	// Cacheinfo shorter than its struct.
	a := &nlMsg{b: make([]byte, unix.SizeofIfAddrmsg)}
	a.attr(unix.IFA_CACHEINFO, []byte{1, 2, 3, 4})
	if _, err := parseAddr(a.b); err == nil {
		t.Error("parseAddr accepted a 4-byte cacheinfo")
	}
}
