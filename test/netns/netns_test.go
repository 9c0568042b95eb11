package netns

import (
	"slices"
	"strings"
	"testing"
)

// The mountinfo of a machine where a lab mounted n1 in a plain /run/netns, its process died, and `ip netns add
// live` then self-bind-mounted the directory (recursively: n1 has a copy in the bind), plus a doubly mounted file.
const coveredMountinfo = `22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
69 27 0:4 net:[4026532175] /run/netns/n1 rw - nsfs nsfs rw
70 27 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw
71 70 0:4 net:[4026532175] /run/netns/n1 rw shared:2 - nsfs nsfs rw
72 70 0:4 net:[4026532180] /run/netns/live rw shared:3 - nsfs nsfs rw
73 72 0:4 net:[4026532181] /run/netns/live rw shared:4 - nsfs nsfs rw
74 70 0:4 net:[4026532182] /run/netns/sp\040ace rw shared:5 - nsfs nsfs rw
75 27 0:40 / /sys/fs/bpf rw,relatime - bpf bpffs rw,mode=700
76 70 0:41 / /run/netns/sub rw - tmpfs tmpfs rw
77 76 0:4 net:[4026532183] /run/netns/sub/deeper rw - nsfs nsfs rw
`

func TestNSFSMountsAndCovered(t *testing.T) {
	ms, err := parseMountinfo(strings.NewReader(coveredMountinfo))
	if err != nil {
		t.Fatal(err)
	}
	got := nsfsMounts(ms, "/run/netns")
	want := []Mount{
		{ID: 69, Parent: 27, Name: "n1", NS: "net:[4026532175]", Covered: true},
		{ID: 71, Parent: 70, Name: "n1", NS: "net:[4026532175]"},
		{ID: 72, Parent: 70, Name: "live", NS: "net:[4026532180]", Covered: true},
		{ID: 73, Parent: 72, Name: "live", NS: "net:[4026532181]"},
		{ID: 74, Parent: 70, Name: "sp ace", NS: "net:[4026532182]"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("nsfsMounts =\n%+v\nwant\n%+v", got, want)
	}
}

func TestCoveredCases(t *testing.T) {
	cases := []struct {
		name, mountinfo string
		covered         []int
	}{
		{"nothing covered", "1 0 0:1 / / rw - ext4 x rw\n2 1 0:2 / /a rw - tmpfs t rw\n3 2 0:3 / /a/b rw - tmpfs t rw\n", nil},
		{"sibling on an ancestor", "1 0 0:1 / / rw - ext4 x rw\n2 1 0:2 / /a/b rw - tmpfs t rw\n3 1 0:3 / /a rw - tmpfs t rw\n", []int{2}},
		{"same mount point, later wins", "1 0 0:1 / / rw - ext4 x rw\n2 1 0:2 / /a rw - tmpfs t rw\n3 1 0:3 / /a rw - tmpfs t rw\n", []int{2}},
		{"children of a covered mount", "1 0 0:1 / / rw - ext4 x rw\n2 1 0:2 / /a/b rw - tmpfs t rw\n4 2 0:4 / /a/b/c rw - tmpfs t rw\n3 1 0:3 / /a rw - tmpfs t rw\n", []int{2, 4}},
		{"sibling prefix is not an ancestor", "1 0 0:1 / / rw - ext4 x rw\n2 1 0:2 / /ab rw - tmpfs t rw\n3 1 0:3 / /a rw - tmpfs t rw\n", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ms, err := parseMountinfo(strings.NewReader(tc.mountinfo))
			if err != nil {
				t.Fatal(err)
			}
			var got []int
			for id := range covered(ms) {
				got = append(got, id)
			}
			slices.Sort(got)
			if !slices.Equal(got, tc.covered) {
				t.Errorf("covered = %v, want %v", got, tc.covered)
			}
		})
	}
}

func TestParseMountinfoRejectsMalformedLines(t *testing.T) {
	for _, line := range []string{"1 2 3", "a 1 0:1 / / rw - ext4 x rw", "1 0 0:1 / / rw shared:1 ext4 x rw", "1 0 0:1 / / rw -"} {
		if _, err := parseMountinfo(strings.NewReader(line + "\n")); err == nil {
			t.Errorf("parseMountinfo(%q) succeeded", line)
		}
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{`a\040b`: "a b", `\134`: `\`, `x\01`: `x\01`, `tab\011`: "tab\t", "plain": "plain"} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestValidName(t *testing.T) {
	for name, want := range map[string]bool{"ok-1": true, "": false, ".": false, "..": false, "a/b": false, strings.Repeat("x", 300): false} {
		if got := ValidName(name); got != want {
			t.Errorf("ValidName(%q) = %v, want %v", name, got, want)
		}
	}
}
