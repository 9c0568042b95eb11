package admin

import (
	"runtime"
	"runtime/debug"

	"github.com/ambit-mesh/ambit/admin/dump"
)

// Version is the version both processes report in metrics and the admin API; set at build time with
// -ldflags "-X github.com/ambit-mesh/ambit/admin.Version=<version>".
var Version = "dev"

// BuildInfoFromBinary describes the running binary: version as given, the VCS revision Go recorded at
// build time (with "-dirty" for a modified tree) and the Go version.
func BuildInfoFromBinary(version string) dump.BuildInfo {
	bi := dump.BuildInfo{Version: version, GoVersion: runtime.Version()}
	if info, ok := debug.ReadBuildInfo(); ok {
		var modified bool
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				bi.GitRevision = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if modified && bi.GitRevision != "" {
			bi.GitRevision += "-dirty"
		}
	}
	return bi
}
