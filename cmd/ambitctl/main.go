// Command ambitctl is Ambit's command-line tool: waypoint management and node-level debugging.
package main

func main() {}
