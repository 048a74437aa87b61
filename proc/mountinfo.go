package proc

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// Mount is one line of /proc/PID/mountinfo.
type Mount struct {
	ID, Parent   int
	Major, Minor uint32
	// Root is the path of the mount's root inside its filesystem (a bind
	// mount of a subdirectory shows that subdirectory); MountPoint is
	// relative to the reading process's root. Both are unescaped.
	Root, MountPoint string
	// Options are the per-mount options ("rw,nosuid,relatime").
	Options string
	// Optional are the optional fields: "shared:N", "master:N",
	// "propagate_from:N", "unbindable".
	Optional []string
	FsType   string
	Source   string
	// SuperOptions are the superblock's options ("rw,size=1024k").
	SuperOptions string
}

// Dev returns "major:minor".
func (m *Mount) Dev() string { return fmt.Sprintf("%d:%d", m.Major, m.Minor) }

// HasOption reports whether the per-mount options include o.
func (m *Mount) HasOption(o string) bool {
	for _, x := range strings.Split(m.Options, ",") {
		if x == o {
			return true
		}
	}
	return false
}

// ReadMountInfo reads and parses /proc/PID/mountinfo.
func ReadMountInfo(pid int) ([]Mount, error) {
	b, err := ReadFile(Path(pid, "mountinfo"))
	if err != nil {
		return nil, err
	}
	return ParseMountInfo(b)
}

// ParseMountInfo parses mountinfo text (see proc(5)):
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
func ParseMountInfo(b []byte) ([]Mount, error) {
	var out []Mount
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" {
			continue
		}
		m, err := parseMountLine(line)
		if err != nil {
			return nil, fmt.Errorf("mountinfo line %d: %w", n, err)
		}
		out = append(out, m)
	}
	return out, sc.Err()
}

func parseMountLine(line string) (Mount, error) {
	var m Mount
	f := strings.Split(line, " ")
	sep := -1
	for i := 6; i < len(f); i++ {
		if f[i] == "-" {
			sep = i
			break
		}
	}
	if len(f) < 10 || sep < 0 || len(f) < sep+4 {
		return m, fmt.Errorf("malformed %q", line)
	}
	var err error
	if m.ID, err = strconv.Atoi(f[0]); err != nil {
		return m, fmt.Errorf("mount id in %q", line)
	}
	if m.Parent, err = strconv.Atoi(f[1]); err != nil {
		return m, fmt.Errorf("parent id in %q", line)
	}
	maj, min, ok := strings.Cut(f[2], ":")
	ma, err1 := strconv.ParseUint(maj, 10, 32)
	mi, err2 := strconv.ParseUint(min, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return m, fmt.Errorf("device in %q", line)
	}
	m.Major, m.Minor = uint32(ma), uint32(mi)
	m.Root = unescapeOctal(f[3])
	m.MountPoint = unescapeOctal(f[4])
	m.Options = f[5]
	m.Optional = append([]string(nil), f[6:sep]...)
	m.FsType = unescapeOctal(f[sep+1])
	m.Source = unescapeOctal(f[sep+2])
	m.SuperOptions = strings.Join(f[sep+3:], " ")
	return m, nil
}

// unescapeOctal undoes the kernel's escaping of space, tab, newline and
// backslash as \040, \011, \012 and \134 in mountinfo paths.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }
