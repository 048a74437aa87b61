package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ckpt/ckpt/image"
)

func convertCmd() *cobra.Command {
	var compress, verbose bool
	c := &cobra.Command{
		Use:   "convert [--compress[=false]] IN OUT",
		Short: "Upgrade an image to the current format version (IN or OUT may be - for stdin/stdout)",
		Long: fmt.Sprintf(`Convert the image IN, of any format version from %d to %d, into OUT in
version %d, the one restart accepts. Either may be - for standard input or
output. The image is streamed and checked as it is read; OUT is written under
a temporary name in its directory and renamed at the end, so on error (a
damaged or truncated IN) nothing is left and an existing OUT is untouched;
IN and OUT may be the same file.

OUT is zstd-compressed when IN is; --compress or --compress=false choose.
An image that already has version %d is copied (checked, and compressed or
not as asked), and ckpt says so; the exit status is 0.`,
			image.OldestVersion, image.FormatVersion, image.FormatVersion, image.FormatVersion),
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			mode := image.SameCompression
			if cmd.Flags().Changed("compress") {
				mode = image.Decompress
				if compress {
					mode = image.Compress
				}
			}
			res, err := convertFile(args[0], args[1], mode)
			if err != nil {
				return fmt.Errorf("convert %s: %w", args[0], err)
			}
			if res.From == res.To {
				fmt.Fprintf(os.Stderr, "ckpt: %s already has format version %d, the current one; copied it to %s\n", args[0], res.To, args[1])
			} else if verbose {
				fmt.Fprintf(os.Stderr, "ckpt: converted %s from format version %d to %d: %s, %d bytes (uncompressed)\n", args[0], res.From, res.To, args[1], res.Bytes)
			}
			return nil
		},
	}
	c.Flags().BoolVar(&compress, "compress", false, "write a zstd-compressed image (=false: uncompressed; default: as IN)")
	c.Flags().BoolVarP(&verbose, "verbose", "v", false, "report the versions and size on stderr")
	return c
}

// convertFile runs image.Convert from path in to path out ("-": stdin,
// stdout). A regular OUT file appears, by rename, only once complete.
func convertFile(in, out string, mode image.Compression) (image.ConvertResult, error) {
	var r io.Reader = os.Stdin
	if in != "-" {
		f, err := os.Open(in)
		if err != nil {
			return image.ConvertResult{}, err
		}
		defer f.Close()
		r = f
	} else if isTerminal(os.Stdin) {
		return image.ConvertResult{}, fmt.Errorf("no image: pipe one to standard input")
	}
	if out == "-" {
		if isTerminal(os.Stdout) {
			return image.ConvertResult{}, fmt.Errorf("refusing to write an image to a terminal; give OUT or redirect stdout")
		}
		// A reader that goes away must fail the conversion with an
		// error, not kill ckpt with SIGPIPE.
		signal.Ignore(syscall.SIGPIPE)
		return image.Convert(r, os.Stdout, mode)
	}
	if fi, err := os.Stat(out); err == nil && !fi.Mode().IsRegular() {
		// A device or FIFO: write to it as it is.
		f, err := os.OpenFile(out, os.O_WRONLY, 0)
		if err != nil {
			return image.ConvertResult{}, err
		}
		res, err := image.Convert(r, f, mode)
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("write %s: %w", out, cerr)
		}
		return res, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".convert-*")
	if err != nil {
		return image.ConvertResult{}, err
	}
	res, err := image.Convert(r, tmp, mode)
	if err == nil {
		if err = tmp.Close(); err == nil {
			err = os.Rename(tmp.Name(), out)
		}
		if err != nil {
			err = fmt.Errorf("write %s: %w", out, err)
		}
	} else {
		tmp.Close()
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return res, err
}

// convertHint turns restart's refusal of an old image into the command that
// fixes it.
func convertHint(err error, args []string) error {
	var ve *image.VersionError
	if !errors.As(err, &ve) {
		return err
	}
	if len(args) == 0 || args[0] == "-" {
		return fmt.Errorf("restart: the image on standard input has format version %d, this ckpt restarts version %d: pipe it through `ckpt convert - -` first", ve.Version, image.FormatVersion)
	}
	in := args[0]
	out := convertedName(in)
	if _, err := os.Lstat(out); err == nil {
		out = in // never suggest overwriting another file; in place is safe
	}
	return fmt.Errorf("restart: %s has image format version %d, this ckpt restarts version %d: run `ckpt convert %s %s` and restart %s", in, ve.Version, image.FormatVersion, shellQuote(in), shellQuote(out), shellQuote(out))
}

// convertedName suggests a name for the converted image: a.img and a.v1.img
// become a.v2.img, a becomes a.v2.
func convertedName(path string) string {
	dir, file := filepath.Split(path)
	parts := strings.Split(file, ".")
	v := fmt.Sprintf("v%d", image.FormatVersion)
	for i := len(parts) - 1; i >= 0; i-- {
		if p := parts[i]; len(p) >= 2 && p[0] == 'v' && strings.Trim(p[1:], "0123456789") == "" {
			parts[i] = v
			return dir + strings.Join(parts, ".")
		}
	}
	if len(parts) < 2 || parts[0] == "" {
		return path + "." + v
	}
	parts = append(parts[:len(parts)-1], v, parts[len(parts)-1])
	return dir + strings.Join(parts, ".")
}

func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/+:,=@") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
