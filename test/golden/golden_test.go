// Package golden keeps one image of every format version ckpt ever wrote
// (testdata/vN.img) and checks that each still restarts, directly or after
// `ckpt convert`, so that a format change cannot strand old images.
//
// In a nutshell: every image is a checkpoint of the same tiny static
// program (testdata/prog.c, committed as its binary testdata/prog), which ran as
// /run/ckpt-golden/prog with PID 1000 in a PID namespace of its own. To
// restart one, a test recreates exactly that: it enters fresh mount and PID
// namespaces (unshare --mount --pid --fork --mount-proc), mounts a tmpfs on
// /run there (private to the namespace: the machine's /run is untouched),
// copies prog to the recorded path, creates ./go and runs ckpt restart; the
// program then checks its memory and PID and logs PASS or FAIL. Restart
// checks a mapped file only by path and size, so the committed binary is
// all another machine needs.
//
// `make golden` (go test -run TestUpdateGolden -update-golden) rewrites the
// image of the current format version with the code in this tree.
package golden

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ckpt/ckpt/image"
)

var updateGolden = flag.Bool("update-golden", false, "regenerate the golden image of the current format version (testdata for TestGolden)")

var (
	ckptBin string
	here    string // testdata: the program and the images
)

func TestMain(m *testing.M) {
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Println("golden: skipped, needs root")
		os.Exit(0)
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		fmt.Println("golden: skipped, needs unshare (util-linux)")
		os.Exit(0)
	}
	_, file, _, _ := runtime.Caller(0)
	here = filepath.Join(filepath.Dir(file), "testdata")
	dir, err := os.MkdirTemp("", "ckpt-golden-")
	if err != nil {
		panic(err)
	}
	ckptBin = filepath.Join(dir, "ckpt")
	out, err := exec.Command("go", "build", "-o", ckptBin, filepath.Join(here, "..", "..", "..", "cmd", "ckpt")).CombinedOutput()
	if err != nil {
		fmt.Printf("build ckpt: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// setup is the start of every namespace script: a private tmpfs on /run
// holding the program at the path the images record, as the cwd.
const setup = `
mount -t tmpfs -o mode=0755 ckpt-golden /run
mkdir /run/ckpt-golden
cp "$PROG" /run/ckpt-golden/prog
cd /run/ckpt-golden
`

// generate starts the program with PID 1000 and portable resource limits
// (restart cannot raise a hard limit) and checkpoints it.
const generate = setup + `
echo 999 > /proc/sys/kernel/ns_last_pid
prlimit --core=0 --cpu=100000 --data=1073741824 --fsize=1073741824 --locks=1024 \
	--memlock=65536 --msgqueue=819200 --nice=0 --nofile=256 --nproc=1024 --rss=1073741824 \
	--rtprio=0 --rttime=1000000 --sigpending=1024 --stack=8388608 --as=1073741824 ./prog &
pid=$!
n=0
until grep -qx READY log 2>/dev/null; do
	n=$((n+1)); [ $n -lt 2000 ] || { echo "prog did not say READY"; exit 1; }
	sleep 0.01
done
sleep 0.05
"$CKPT" checkpoint --kill -o "$IMG" $pid
wait $pid || true
echo "checkpointed pid $pid"
`

// restart restarts $IMG and prints the program's log.
const restart = setup + `
touch go
rc=0
"$CKPT" restart "$IMG" </dev/null || rc=$?
cat log 2>/dev/null || true
exit $rc
`

// inNamespaces runs script with sh in fresh mount and PID namespaces and
// returns its combined output. Everything in them dies with them.
func inNamespaces(t *testing.T, script string, env ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-ec", script)
	cmd.Env = append(os.Environ(), "CKPT="+ckptBin, "PROG="+filepath.Join(here, "prog"))
	cmd.Env = append(cmd.Env, env...)
	cmd.WaitDelay = time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-time.After(60 * time.Second):
		cmd.Process.Kill() // --kill-child takes the namespace with it
		<-done
		t.Fatalf("namespace script timed out; output:\n%s", out.String())
		return "", nil
	}
}

func goldenPath(v uint32) string { return filepath.Join(here, fmt.Sprintf("v%d.img", v)) }

// TestUpdateGolden rewrites the golden image of the current format version
// (only with -update-golden) and checks that it restarts.
func TestUpdateGolden(t *testing.T) {
	if !*updateGolden {
		t.Skip("run with -update-golden to regenerate the golden image")
	}
	tmp := filepath.Join(t.TempDir(), "img")
	out, err := inNamespaces(t, generate, "IMG="+tmp)
	if err != nil {
		t.Fatalf("generate: %v\n%s", err, out)
	}
	if log, err := inNamespaces(t, restart, "IMG="+tmp); err != nil || !strings.Contains(log, "PASS") {
		t.Fatalf("the new golden image does not restart: %v\n%s", err, log)
	}
	b, err := os.ReadFile(tmp)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(goldenPath(image.FormatVersion), b, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s (%d bytes): %s", goldenPath(image.FormatVersion), len(b), strings.TrimSpace(out))
}

func ckpt(args ...string) (string, error) {
	out, err := exec.Command(ckptBin, args...).CombinedOutput()
	return string(out), err
}

// TestGolden restarts the golden image of every format version: the
// current one directly, older ones after the `ckpt convert` that restart's
// refusal names. inspect must read them all.
func TestGolden(t *testing.T) {
	for _, v := range image.Versions() {
		t.Run(fmt.Sprintf("v%d", v.Number), func(t *testing.T) {
			golden := goldenPath(v.Number)
			if _, err := os.Stat(golden); err != nil {
				t.Fatalf("no golden image of format version %d (%v): every version needs one; `make golden` writes the current version's", v.Number, err)
			}
			out, err := ckpt("inspect", golden)
			if err != nil || !strings.Contains(out, fmt.Sprintf("image format %d,", v.Number)) || !strings.Contains(out, "process 1000 (prog)") {
				t.Fatalf("inspect: %v\n%s", err, out)
			}
			if _, err := ckpt("inspect", "--json", golden); err != nil {
				t.Fatalf("inspect --json: %v", err)
			}
			dir := t.TempDir()
			img := filepath.Join(dir, "golden.img")
			b, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(img, b, 0o600); err != nil {
				t.Fatal(err)
			}
			if v.Number == image.FormatVersion {
				out, err := ckpt("convert", img, filepath.Join(dir, "copy.img"))
				if err != nil || !strings.Contains(out, "already has format version") {
					t.Fatalf("convert of a current image: %v\n%s", err, out)
				}
			} else {
				// Refused, with the command to run; run exactly that.
				log, err := inNamespaces(t, restart, "IMG="+img)
				if err == nil || strings.Contains(log, "PASS") {
					t.Fatalf("restart of a version %d image was not refused: %v\n%s", v.Number, err, log)
				}
				_, hint, ok := strings.Cut(log, "run `")
				hint, _, ok2 := strings.Cut(hint, "`")
				if !ok || !ok2 || strings.Contains(log, "\n\n") || !strings.HasPrefix(hint, "ckpt convert "+img+" ") {
					t.Fatalf("refusal does not say which ckpt convert to run:\n%s", log)
				}
				args := strings.Fields(hint)
				if out, err := ckpt(args[1:]...); err != nil {
					t.Fatalf("%s: %v\n%s", hint, err, out)
				}
				img = args[3]
				out, err := ckpt("inspect", img)
				if err != nil || !strings.Contains(out, fmt.Sprintf("image format %d,", image.FormatVersion)) {
					t.Fatalf("inspect of the converted image: %v\n%s", err, out)
				}
			}
			log, err := inNamespaces(t, restart, "IMG="+img)
			if err != nil || !strings.Contains(log, "PASS") {
				t.Fatalf("restart: %v\n%s", err, log)
			}
		})
	}
}

// TestGoldenCompressedConvert converts the oldest golden image into a
// compressed current one, through pipes, and restarts that.
func TestGoldenCompressedConvert(t *testing.T) {
	img := filepath.Join(t.TempDir(), "img.zst")
	cmd := exec.Command("sh", "-c", `"$CKPT" convert --compress - - <"$IN" | "$CKPT" convert - "$OUT"`)
	cmd.Env = append(os.Environ(), "CKPT="+ckptBin, "IN="+goldenPath(image.OldestVersion), "OUT="+img)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("convert: %v\n%s", err, out)
	}
	b, err := os.ReadFile(img)
	if err != nil || !bytes.HasPrefix(b, []byte{0x28, 0xb5, 0x2f, 0xfd}) {
		t.Fatalf("the output is not zstd-compressed (%v)", err)
	}
	if log, err := inNamespaces(t, restart, "IMG="+img); err != nil || !strings.Contains(log, "PASS") {
		t.Fatalf("restart: %v\n%s", err, log)
	}
}

// TestConvertDamagedLeavesNothing converts damaged copies of a golden
// image: each must fail with one line naming the damage and leave no file,
// not even a temporary one, and an existing OUT as it was.
func TestConvertDamagedLeavesNothing(t *testing.T) {
	b, err := os.ReadFile(goldenPath(image.OldestVersion))
	if err != nil {
		t.Fatal(err)
	}
	flipped := append([]byte{}, b...)
	flipped[len(flipped)-6000] ^= 1
	for _, tt := range []struct {
		name string
		data []byte
		want string
	}{
		{"truncated", b[:len(b)-100], "truncated"},
		{"flipped", flipped, "checksum"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			in, out, kept := filepath.Join(dir, "in.img"), filepath.Join(dir, "out.img"), filepath.Join(dir, "kept.img")
			os.WriteFile(in, tt.data, 0o600)
			os.WriteFile(kept, []byte("keep me"), 0o600)
			for _, o := range []string{out, kept} {
				msg, err := ckpt("convert", in, o)
				if err == nil || !strings.Contains(msg, tt.want) || strings.Count(strings.TrimSpace(msg), "\n") != 0 {
					t.Fatalf("convert: %v, want one line with %q:\n%s", err, tt.want, msg)
				}
			}
			ents, _ := os.ReadDir(dir)
			if len(ents) != 2 {
				t.Fatalf("convert left files behind: %v", ents)
			}
			if k, _ := os.ReadFile(kept); string(k) != "keep me" {
				t.Fatal("a failed convert changed the existing OUT")
			}
		})
	}
}
