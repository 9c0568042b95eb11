// Command ambit is Ambit's data-plane binary: the node agent (ambit agent) and the
// embedded L7 waypoint (ambit waypoint).
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "ambit: no mode implemented yet")
	os.Exit(2)
}
