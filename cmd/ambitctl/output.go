package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"sigs.k8s.io/yaml"
)

// Output formats shared by every command with -o.
const (
	outputShort = "short"
	outputJSON  = "json"
	outputYAML  = "yaml"
)

func checkOutput(o string) error {
	switch o {
	case outputShort, outputJSON, outputYAML:
		return nil
	}
	return badInput("unknown output format %q: use short, json or yaml", o)
}

// writeStructured prints v as pretty JSON (4-space indent, as istioctl) or as YAML converted from it.
func writeStructured(w io.Writer, format string, v any) error {
	js, err := json.MarshalIndent(v, "", "    ")
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	if format == outputYAML {
		y, err := yaml.JSONToYAML(js)
		if err != nil {
			return fmt.Errorf("encode output: %w", err)
		}
		_, err = w.Write(y)
		return err
	}
	_, err = fmt.Fprintln(w, string(js))
	return err
}

// newTable returns a tabwriter laid out like istioctl's tables.
func newTable(w io.Writer, padding int) *tabwriter.Writer {
	return new(tabwriter.Writer).Init(w, 0, 8, padding, ' ', 0)
}
