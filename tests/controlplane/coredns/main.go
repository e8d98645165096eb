// CoreDNS for the real node of the end-to-end tests, with only the plugins a cluster
// DNS needs: the kubernetes plugin answers for cluster.local, and nothing can forward
// a query off the machine because no forwarding plugin (forward, grpc, ...) is
// compiled in. Built by ../build-node.sh; the way CoreDNS documents for a custom
// plugin set ("Build with external golang source code").
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The order of upstream's plugin.cfg, restricted to the plugins imported above.
var directives = []string{
	"ready",
	"health",
	"errors",
	"log",
	"cache",
	"kubernetes",
}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
