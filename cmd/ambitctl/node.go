package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ambit-mesh/ambit/admin/dump"
)

// Defaults of the node commands.
const (
	defaultAdminAddress = "localhost:15000"
	adminTimeout        = 15 * time.Second
)

// nodeFlags are the flags every node debug command has, named as istioctl ztunnel-config's.
type nodeFlags struct {
	*rootFlags
	output    string
	file      string
	adminAddr string
	adminPort int
	node      string
}

func (nf *nodeFlags) register(cmd *cobra.Command, withFile bool) {
	fs := cmd.Flags()
	fs.StringVarP(&nf.output, "output", "o", outputShort, "Output format: one of json|yaml|short")
	fs.StringVar(&nf.adminAddr, "admin-address", defaultAdminAddress, "address (host:port or URL) of the node agent's admin API")
	fs.IntVar(&nf.adminPort, "proxy-admin-port", 15000, "admin port of the node agent; replaces the port of --admin-address when set")
	fs.StringVar(&nf.node, "node", "", "the node the agent must be serving (checked against the agent's dump)")
	if withFile {
		fs.StringVarP(&nf.file, "file", "f", "", "read a saved config dump (JSON, from ztunnel or Ambit; - for stdin) instead of asking an agent")
	}
}

// validate applies istioctl's rule that --node goes with neither --file nor a pod name. Unlike istioctl, a
// pod name may be combined with --file: here it only filters the output, it does not select an agent.
func (nf *nodeFlags) validate(args []string) error {
	if nf.node != "" && (nf.file != "" || len(args) == 1) {
		return badInput("at most one of --file, --node, or pod name must be passed")
	}
	if nf.adminPort < 1 || nf.adminPort > 65535 {
		return badInput("port number %d must be in the range 1..65535", nf.adminPort)
	}
	return nil
}

// baseURL returns the admin API's URL from --admin-address and, when given, --proxy-admin-port.
func (nf *nodeFlags) baseURL(cmd *cobra.Command) (*url.URL, error) {
	addr := nf.adminAddr
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil || u.Host == "" {
		return nil, badInput("invalid --admin-address %q", nf.adminAddr)
	}
	if cmd.Flags().Changed("proxy-admin-port") {
		u.Host = net.JoinHostPort(u.Hostname(), strconv.Itoa(nf.adminPort))
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	return u, nil
}

// call performs one admin request and returns the body of a 200 response.
func (nf *nodeFlags) call(cmd *cobra.Command, method, path, query string) ([]byte, error) {
	base, err := nf.baseURL(cmd)
	if err != nil {
		return nil, err
	}
	u := *base
	u.Path += path
	u.RawQuery = query
	ctx, cancel := context.WithTimeout(cmd.Context(), adminTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, u.String(), err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reach node agent admin API at %s: %w", base.Host, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", u.String(), err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s %s: %s: %s", method, u.String(), resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}

// load returns the config dump, raw and parsed, from --file or from the agent.
func (nf *nodeFlags) load(cmd *cobra.Command) ([]byte, *dump.ConfigDump, error) {
	if nf.file != "" {
		var (
			b   []byte
			err error
		)
		if nf.file == "-" {
			b, err = io.ReadAll(cmd.InOrStdin())
		} else {
			b, err = os.ReadFile(nf.file)
		}
		if err != nil {
			return nil, nil, inputError{fmt.Errorf("read config dump: %w", err)}
		}
		d, err := dump.Parse(b)
		if err != nil {
			return nil, nil, inputError{fmt.Errorf("%s: %w", nf.file, err)}
		}
		return b, d, nil
	}
	b, err := nf.call(cmd, http.MethodGet, "/config_dump", "")
	if err != nil {
		return nil, nil, err
	}
	d, err := dump.Parse(b)
	if err != nil {
		return nil, nil, fmt.Errorf("config dump from %s: %w", nf.adminAddr, err)
	}
	if nf.node != "" && d.NodeName != "" && !strings.EqualFold(d.NodeName, nf.node) {
		return nil, nil, fmt.Errorf("the agent at %s serves node %q, not %q", nf.adminAddr, d.NodeName, nf.node)
	}
	return b, d, nil
}

// checkDumpOutput validates -o for the dump commands, with istioctl's message.
func checkDumpOutput(o string) error {
	if o != outputShort && o != outputJSON && o != outputYAML {
		return badInput("output format %q not supported", o)
	}
	return nil
}

// targetFilter splits a positional "<name>[.<namespace>]" and returns the name. The namespace from the
// argument, else from -n, replaces *namespace (a --workload-namespace filter); with neither it is kept.
func targetFilter(arg, rootNamespace string, namespace *string) string {
	name, ns, ok := strings.Cut(arg, ".")
	if !ok {
		ns = rootNamespace
	}
	if ns != "" {
		*namespace = ns
	}
	return name
}

// nodeCommandNames names one command in each tree: the primary name under `node`, the one under
// `ztunnel-config` (istioctl's), and the aliases both accept.
type nodeCommandNames struct {
	node, zc string
	aliases  []string
}

var (
	namesWorkloads    = nodeCommandNames{"workloads", "workload", []string{"w"}}
	namesServices     = nodeCommandNames{"services", "service", []string{"s", "svc"}}
	namesPolicies     = nodeCommandNames{"policies", "policy", []string{"p", "pol"}}
	namesCertificates = nodeCommandNames{"certificates", "certificate", []string{"certs", "cert"}}
	namesConnections  = nodeCommandNames{"connections", "connections", []string{"cons"}}
	namesAll          = nodeCommandNames{"all", "all", nil}
	namesLog          = nodeCommandNames{"log", "log", []string{"o"}}
)

// use returns the command's name in the tree (zc: istioctl's) and every other spelling as aliases.
func (n nodeCommandNames) use(zc bool) (string, []string) {
	name, other := n.node, n.zc
	if zc {
		name, other = n.zc, n.node
	}
	aliases := append([]string{}, n.aliases...)
	if other != name {
		aliases = append(aliases, other)
	}
	return name, aliases
}

func newNodeCmd(rf *rootFlags) *cobra.Command {
	cmd := nodeGroup(rf, false)
	cmd.Use = "node"
	cmd.Short = "Inspect a running node agent (istioctl ztunnel-config equivalents)"
	cmd.Long = "Read the admin API of a running node agent (--admin-address, default " + defaultAdminAddress + ") or a " +
		"saved config dump (-f) and print its workloads, services, policies, certificates and connections with " +
		"the columns and formats of istioctl ztunnel-config. The same commands are available as " +
		"`ambitctl ztunnel-config` (zc) under istioctl's names."
	cmd.Example = `  # Workloads known to the agent on this node
  ambitctl node workloads

  # Connections of one pod, with IP addresses
  ambitctl node connections client.shop --raw

  # Read a dump saved with: curl localhost:15000/config_dump > dump.json (works for ztunnel dumps too)
  ambitctl node services -f dump.json -o yaml

  # Turn on debug logging
  ambitctl node log --level debug`
	return cmd
}

func newZtunnelConfigCmd(rf *rootFlags) *cobra.Command {
	cmd := nodeGroup(rf, true)
	cmd.Use = "ztunnel-config"
	cmd.Aliases = []string{"zc"}
	cmd.Short = "Update or retrieve current node agent configuration (as istioctl ztunnel-config)"
	cmd.Long = "The node commands under istioctl ztunnel-config's names, for istioctl users. See `ambitctl node --help`."
	cmd.Example = `  # Retrieve summary about workload configuration
  ambitctl ztunnel-config workload

  # Retrieve summary about certificates
  ambitctl zc certificates`
	return cmd
}

func nodeGroup(rf *rootFlags, zc bool) *cobra.Command {
	cmd := &cobra.Command{
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 0 {
				return badInput("unknown subcommand %q", args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			cmd.HelpFunc()(cmd, args)
			return nil
		},
	}
	cmd.AddCommand(
		newNodeWorkloadsCmd(rf, zc), newNodeServicesCmd(rf, zc), newNodePoliciesCmd(rf, zc),
		newNodeCertificatesCmd(rf, zc), newNodeConnectionsCmd(rf, zc), newNodeAllCmd(rf, zc), newNodeLogCmd(rf, zc),
	)
	return cmd
}

// dumpCommand builds a command that loads a dump and runs show on it. maxArgs is 0, or 1 for a positional
// "<pod>[.<namespace>]" filter.
func dumpCommand(rf *rootFlags, names nodeCommandNames, zc bool, maxArgs int,
	show func(cmd *cobra.Command, nf *nodeFlags, args []string, raw []byte, d *dump.ConfigDump) error,
) *cobra.Command {
	nf := &nodeFlags{rootFlags: rf}
	name, aliases := names.use(zc)
	use := name
	if maxArgs > 0 {
		use += " [<pod-name>[.<namespace>]]"
	}
	cmd := &cobra.Command{
		Use:     use,
		Aliases: aliases,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > maxArgs {
				return badInput("accepts at most %d argument(s), received %d", maxArgs, len(args))
			}
			if err := nf.validate(args); err != nil {
				return err
			}
			return checkDumpOutput(nf.output)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, d, err := nf.load(cmd)
			if err != nil {
				return err
			}
			return show(cmd, nf, args, raw, d)
		},
	}
	nf.register(cmd, true)
	return cmd
}

func newNodeWorkloadsCmd(rf *rootFlags, zc bool) *cobra.Command {
	var f workloadFilter
	cmd := dumpCommand(rf, namesWorkloads, zc, 1, func(cmd *cobra.Command, nf *nodeFlags, args []string, _ []byte, d *dump.ConfigDump) error {
		filter := f
		if len(args) == 1 {
			filter.name = targetFilter(args[0], nf.namespace, &filter.namespace)
		}
		if nf.output == outputShort {
			return printWorkloads(cmd.OutOrStdout(), d, filter)
		}
		return writeDump(cmd.OutOrStdout(), nf.output, selectWorkloads(d, filter))
	})
	cmd.Short = "Workloads known to the node agent"
	cmd.Long = "Print the workloads in the agent's state: NAMESPACE, POD NAME, ADDRESS, NODE, WAYPOINT (the waypoint's Service name, None or NA) and PROTOCOL (HBONE when captured)."
	cmd.Flags().StringVar(&f.address, "address", "", "Filter workloads by address field")
	cmd.Flags().StringVar(&f.namespace, "workload-namespace", "", "Filter workloads by namespace field")
	cmd.Flags().StringVar(&f.node, "workload-node", "", "Filter workloads by node")
	return cmd
}

func newNodeServicesCmd(rf *rootFlags, zc bool) *cobra.Command {
	var namespace string
	cmd := dumpCommand(rf, namesServices, zc, 0, func(cmd *cobra.Command, nf *nodeFlags, _ []string, _ []byte, d *dump.ConfigDump) error {
		if nf.output == outputShort {
			return printServices(cmd.OutOrStdout(), d, namespace)
		}
		return writeDump(cmd.OutOrStdout(), nf.output, selectServices(d, namespace))
	})
	cmd.Short = "Services known to the node agent"
	cmd.Long = "Print the services in the agent's state: NAMESPACE, SERVICE NAME, SERVICE VIP, WAYPOINT and ENDPOINTS (healthy/total)."
	cmd.Flags().StringVar(&namespace, "service-namespace", "", "Filter services by namespace field")
	return cmd
}

func newNodePoliciesCmd(rf *rootFlags, zc bool) *cobra.Command {
	var namespace string
	cmd := dumpCommand(rf, namesPolicies, zc, 0, func(cmd *cobra.Command, nf *nodeFlags, _ []string, _ []byte, d *dump.ConfigDump) error {
		if nf.output == outputShort {
			return printPolicies(cmd.OutOrStdout(), d, namespace)
		}
		return writeDump(cmd.OutOrStdout(), nf.output, selectPolicies(d, namespace))
	})
	cmd.Short = "L4 authorization policies the node agent enforces"
	cmd.Long = "Print the agent's L4 authorizations: NAMESPACE, POLICY NAME, ACTION and SCOPE (Global, Namespace or WorkloadSelector)."
	cmd.Flags().StringVar(&namespace, "policy-namespace", "", "Filter policies by namespace field")
	return cmd
}

func newNodeCertificatesCmd(rf *rootFlags, zc bool) *cobra.Command {
	cmd := dumpCommand(rf, namesCertificates, zc, 0, func(cmd *cobra.Command, nf *nodeFlags, _ []string, _ []byte, d *dump.ConfigDump) error {
		if nf.output == outputShort {
			return printCertificates(cmd.OutOrStdout(), d, time.Now())
		}
		certs := d.Certificates
		if certs == nil {
			certs = []*dump.Certificate{}
		}
		return writeDump(cmd.OutOrStdout(), nf.output, certs)
	})
	cmd.Short = "Workload certificates held by the node agent"
	cmd.Long = "Print one row per certificate of each identity the agent manages (Leaf, Intermediate, Root), or NA with the state (Initializing, Unavailable) when it holds none. Serial numbers are hex."
	return cmd
}

func newNodeConnectionsCmd(rf *rootFlags, zc bool) *cobra.Command {
	var f connFilter
	cmd := dumpCommand(rf, namesConnections, zc, 1, func(cmd *cobra.Command, nf *nodeFlags, args []string, _ []byte, d *dump.ConfigDump) error {
		filter := f
		if len(args) == 1 {
			filter.name = targetFilter(args[0], nf.namespace, &filter.namespace)
		}
		if nf.output == outputShort {
			return printConnections(cmd.OutOrStdout(), d, filter)
		}
		return writeDump(cmd.OutOrStdout(), nf.output, selectWorkloadStates(d, filter))
	})
	prevArgs := cmd.Args
	cmd.Args = func(c *cobra.Command, args []string) error {
		if err := prevArgs(c, args); err != nil {
			return err
		}
		if f.direction != "" && f.direction != "inbound" && f.direction != "outbound" {
			return badInput("invalid --direction %q: use inbound or outbound", f.direction)
		}
		return nil
	}
	cmd.Short = "Live connections of the node agent's workloads"
	cmd.Long = "Print the connections of the local workloads: WORKLOAD, DIRECTION, LOCAL, REMOTE, REMOTE TARGET and PROTOCOL. Addresses are shown as service hostnames or <pod>.<namespace> unless --raw is given."
	cmd.Flags().StringVar(&f.direction, "direction", "", "Filter workloads by direction (inbound or outbound)")
	cmd.Flags().BoolVar(&f.raw, "raw", false, "If set, show IP addresses instead of names")
	cmd.Flags().StringVar(&f.namespace, "workload-namespace", "", "Filter workloads by namespace field")
	return cmd
}

func newNodeAllCmd(rf *rootFlags, zc bool) *cobra.Command {
	var withHeaders bool
	cmd := dumpCommand(rf, namesAll, zc, 0, func(cmd *cobra.Command, nf *nodeFlags, _ []string, raw []byte, d *dump.ConfigDump) error {
		if nf.output == outputShort {
			return printAll(cmd.OutOrStdout(), d, withHeaders, time.Now())
		}
		return writeRaw(cmd.OutOrStdout(), nf.output, raw)
	})
	cmd.Short = "Every summary of the node agent, or its whole config dump"
	cmd.Long = "Print the workload, service, policy, certificate and connection summaries in turn; with -o json or yaml, the whole config dump as received."
	cmd.Flags().BoolVar(&withHeaders, "with-headers", false, "Print summary with headers")
	return cmd
}

// levelNames are the levels `log --level` accepts, as istioctl.
var levelNames = []string{"trace", "debug", "info", "warning", "warn", "error", "critical", "off"}

// agentLevel maps istioctl's level names to the agent's (ztunnel's): warning is warn, critical is error.
func agentLevel(l string) string {
	switch l {
	case "warning":
		return "warn"
	case "critical":
		return "error"
	}
	return l
}

// parseLogLevels validates a --level value ("[<logger>:]<level>,...") and returns it in the agent's
// spelling.
func parseLogLevels(spec string) (string, error) {
	var out []string
	for clause := range strings.SplitSeq(spec, ",") {
		logger, level := "", clause
		if i := strings.LastIndexAny(clause, ":="); i >= 0 {
			logger, level = clause[:i+1], clause[i+1:]
		}
		if !slices.Contains(levelNames, level) {
			return "", badInput("unrecognized logging level: %v", level)
		}
		out = append(out, logger+agentLevel(level))
	}
	return strings.Join(out, ","), nil
}

func newNodeLogCmd(rf *rootFlags, zc bool) *cobra.Command {
	nf := &nodeFlags{rootFlags: rf}
	var (
		level string
		reset bool
	)
	name, aliases := namesLog.use(zc)
	cmd := &cobra.Command{
		Use:     name,
		Aliases: aliases,
		Short:   "Show or change the node agent's log levels",
		Long: "Without flags, print the agent's log levels. --level [<logger>:]<level>,... changes them (levels: " +
			strings.Join(levelNames, ", ") + "); -r/--reset restores the levels the agent started with.",
		Example: `  # Show the levels
  ambitctl node log

  # Debug everything, access logs at info
  ambitctl node log --level debug,access:info`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 0 {
				return badInput("accepts no arguments, received %d", len(args))
			}
			if err := nf.validate(nil); err != nil {
				return err
			}
			if reset && level != "" {
				return badInput("--level cannot be combined with --reset")
			}
			if nf.output != "" && nf.output != outputShort {
				return badInput("--output is not applicable for this command")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			if level != "" {
				spec, err := parseLogLevels(level)
				if err != nil {
					return err
				}
				q.Set("level", spec)
			}
			query := q.Encode()
			if reset {
				query = "reset"
			}
			if nf.node != "" {
				// /logging does not report the agent's node; check it through the dump first.
				if _, _, err := nf.load(cmd); err != nil {
					return err
				}
			}
			body, err := nf.call(cmd, http.MethodPost, "/logging", query)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%v:\n%v\n", nf.adminAddr, string(body))
			return err
		},
	}
	nf.register(cmd, false)
	cmd.Flags().StringVar(&level, "level", "", "Comma-separated minimum per-logger level of messages to output, in the form of "+
		"[<logger>:]<level>,[<logger>:]<level>,... or <level> to change all active loggers, where level can be one of "+
		"["+strings.Join(levelNames, ", ")+"]")
	cmd.Flags().BoolVarP(&reset, "reset", "r", false, "Reset levels to the values the agent started with")
	return cmd
}
