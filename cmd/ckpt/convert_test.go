package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/ckpt/ckpt/image"
)

func TestConvertedName(t *testing.T) {
	cur := fmt.Sprintf("v%d", image.FormatVersion)
	for in, want := range map[string]string{
		"a.img":        "a.VN.img",
		"/x/a.v1.img":  "/x/a.VN.img",
		"v1.img":       "VN.img",
		"a":            "a.VN",
		"dir.d/a":      "dir.d/a.VN",
		"a.v1":         "a.VN",
		"/x/.hidden":   "/x/.hidden.VN",
		"ckpt.tar.img": "ckpt.tar.VN.img",
	} {
		want = strings.ReplaceAll(want, "VN", cur)
		if got := convertedName(in); got != want {
			t.Errorf("convertedName(%q) = %q, want %q", in, got, want)
		}
	}
}
