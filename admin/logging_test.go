package admin

import (
	"errors"
	"log/slog"
	"maps"
	"testing"
)

func TestParseLevelSpec(t *testing.T) {
	known := []string{"access", "ztunnel::proxy"}
	cases := []struct {
		name string
		spec string
		want LevelChange
		err  error
	}{
		{"bare level", "debug", LevelChange{"": slog.LevelDebug}, nil},
		{"istioctl default logger name", "level:warning", LevelChange{"": slog.LevelWarn}, nil},
		{"named with colon", "access:trace", LevelChange{"access": LevelTrace}, nil},
		{"named with equals", "access=off", LevelChange{"access": LevelOff}, nil},
		{"logger name with colons", "ztunnel::proxy:error", LevelChange{"ztunnel::proxy": slog.LevelError}, nil},
		{"several, later wins", "info,access:debug,critical", LevelChange{"": slog.LevelError, "access": slog.LevelDebug}, nil},
		{"case insensitive", "DEBUG", LevelChange{"": slog.LevelDebug}, nil},
		{"unknown level", "loud", nil, ErrInvalidLevel},
		{"unknown logger", "proxy:debug", nil, ErrUnknownLogger},
		{"empty clause", "debug,", nil, ErrInvalidLevel},
		{"empty", "", nil, ErrInvalidLevel},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseLevelSpec(tc.spec, known)
			if !errors.Is(err, tc.err) || !maps.Equal(got, tc.want) {
				t.Errorf("ParseLevelSpec(%q) = %v, %v; want %v, %v", tc.spec, got, err, tc.want, tc.err)
			}
		})
	}
}

func TestLevelNames(t *testing.T) {
	for _, name := range []string{"trace", "debug", "info", "warn", "error", "off"} {
		l, err := ParseLevel(name)
		if err != nil || LevelName(l) != name {
			t.Errorf("%s: ParseLevel = %v, %v; LevelName = %q", name, l, err, LevelName(l))
		}
	}
	if got := LevelName(slog.LevelInfo + 2); got != "info+2" {
		t.Errorf("LevelName(info+2) = %q", got)
	}
}
