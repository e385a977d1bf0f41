package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lxzan/gws"
)

// The cluster workloads compare ours on one node without a broker ("ours")
// with ours on clusterNodes benchserver processes that share a nats-server
// process of their own (benchserver -nats URL -node-id ID), and, to tell
// the broker's cost from the split's, with one node on NATS.
const (
	clusterImpl  = "ours+nats 3 nodes"
	oneNodeImpl  = "ours+nats 1 node"
	clusterNodes = 3
)

var clusterImpls = []string{"ours", oneNodeImpl, clusterImpl}

// nodesOf is how many nodes on NATS impl is, or 0 for a single process
// without a broker.
func nodesOf(impl string) int {
	switch impl {
	case clusterImpl:
		return clusterNodes
	case oneNodeImpl:
		return 1
	}
	return 0
}

// natsBin is nats-server, built once from the module (bench's go.mod has it
// as a tool) by the first cluster run.
var natsBin string

func natsServerBin() string {
	if natsBin != "" {
		return natsBin
	}
	tmp, err := os.MkdirTemp("", "nats-server")
	check(err)
	bin := filepath.Join(tmp, "nats-server")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/nats-io/nats-server/v2").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "go build nats-server: %v\n%s", err, out)
		os.Exit(1)
	}
	natsBin = bin
	return bin
}

// cluster is a nats-server and the benchserver nodes on it, each a process.
type cluster struct {
	nats  *exec.Cmd
	url   string
	nodes []*server
}

func startCluster(bin string, n int) *cluster {
	port := freePort()
	c := &cluster{url: "nats://127.0.0.1:" + port}
	c.nats = exec.Command(natsServerBin(), "-a", "127.0.0.1", "-p", port)
	check(c.nats.Start())
	for deadline := time.Now().Add(10 * time.Second); ; {
		conn, err := net.Dial("tcp", "127.0.0.1:"+port)
		if err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			c.stop()
			panic("nats-server did not start: " + err.Error())
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i := range n {
		id := "node" + strconv.Itoa(i)
		s := startServer(bin, "ours", "-nats", c.url, "-node-id", id)
		s.label, s.file = id, strings.ReplaceAll(fmt.Sprintf("ours+nats %d nodes", n), " ", "-")+"."+id
		c.nodes = append(c.nodes, s)
	}
	// Every node has heard of every other (hello, then heartbeats).
	for _, s := range c.nodes {
		for deadline := time.Now().Add(10 * time.Second); s.stats()["nodes"] != int64(n); {
			if time.Now().After(deadline) {
				c.stop()
				panic(fmt.Sprintf("%s knows %d of %d nodes", s.label, s.stats()["nodes"], n))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return c
}

// freePort returns a loopback port free a moment ago.
func freePort() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

func (c *cluster) stop() {
	for _, s := range c.nodes {
		s.stop()
	}
	_ = c.nats.Process.Kill()
	_ = c.nats.Wait()
}

// Subscribers are spread evenly over the nodes; publishers use the first.
func (c *cluster) subURL(i int, group string) string {
	return c.nodes[i%len(c.nodes)].url(group, false)
}
func (c *cluster) pubURL(int) string  { return c.nodes[0].url("pub", true) }
func (c *cluster) isCentrifuge() bool { return false }
func (c *cluster) isOurs() bool       { return true }

// procs: nats-server, then each node.
func (c *cluster) procs() []proc {
	out := []proc{{"nats-server", c.nats.Process.Pid}}
	for _, s := range c.nodes {
		out = append(out, proc{s.label, s.cmd.Process.Pid})
	}
	return out
}

// brokers: what each node's broker counted.
func (c *cluster) brokers() string {
	var parts []string
	for _, s := range c.nodes {
		st := s.stats()
		part := fmt.Sprintf("%s broker published %d, received %d, dropped %d, errors %d",
			s.label, st["brokerPublished"], st["brokerReceived"], st["brokerDropped"], st["brokerErrors"])
		if n := st["apiSends"]; n > 0 {
			part += fmt.Sprintf(", %d Go API sends taking %v each on average", n, (time.Duration(st["apiSendNanos"]) / time.Duration(n)).Round(time.Microsecond))
		}
		parts = append(parts, part)
	}
	return strings.Join(parts, "; ")
}

// profile profiles every node (nats-server is not profiled) and the load
// tool.
func (c *cluster) profile(workload string) func() {
	if profileDir == "" {
		return func() {}
	}
	stops := make([]func(), len(c.nodes))
	for i, s := range c.nodes {
		if i == 0 {
			stops[i] = s.profile(workload) // and the load tool's
			continue
		}
		s.post("/profile/start")
		stops[i] = func() {
			check(os.WriteFile(profilePath(workload, s.file, "pprof"), s.post("/profile/stop"), 0o644))
		}
	}
	return func() {
		for _, stop := range stops {
			stop()
		}
	}
}

// idleCluster: perNode idle connections on each of clusterNodes nodes,
// against perNode on one node without a broker (and one on NATS). One process may open at
// most 20,000 files here, so the connections are held by child processes
// of the load tool (-hold), one per node.
type idleCluster struct{ perNode int }

func (w idleCluster) name() string {
	return fmt.Sprintf("cluster idle memory, %d connections per node", w.perNode)
}
func (w idleCluster) kind() string    { return "memory" }
func (w idleCluster) impls() []string { return clusterImpls }
func (w idleCluster) run(bin, impl string) result {
	var nodes []*server
	natsPID := 0
	if n := nodesOf(impl); n > 0 {
		c := startCluster(bin, n)
		defer c.stop()
		nodes, natsPID = c.nodes, c.nats.Process.Pid
	} else {
		s := startServer(bin, impl)
		defer s.stop()
		nodes = []*server{s}
	}
	heap0, rss0 := make([]int64, len(nodes)), make([]int64, len(nodes))
	for i, s := range nodes {
		heap0[i], rss0[i] = s.heap(), s.rss()
	}
	var natsRSS0 int64
	if natsPID != 0 {
		natsRSS0 = procRSS(natsPID)
	}
	// One child per node, all connecting at once.
	children := make([]*holder, len(nodes))
	var wg sync.WaitGroup
	errs := make([]error, len(nodes))
	for i, s := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			children[i], errs[i] = startHolder(s.url("", false), w.perNode, i*w.perNode)
		}()
	}
	wg.Wait()
	defer func() {
		for _, h := range children {
			if h != nil {
				h.stop()
			}
		}
	}()
	for _, err := range errs {
		if err != nil {
			panic(err)
		}
	}
	time.Sleep(2 * time.Second) // let the servers settle: not a synchronisation, a measurement condition
	var rss, heap int64
	var per []string
	for i, s := range nodes {
		st := s.stats()
		if st["connections"] != int64(w.perNode) {
			panic(fmt.Sprintf("%s holds %d connections, not %d", s.label, st["connections"], w.perNode))
		}
		h, r := st["heapInuse"]+st["stackInuse"]-heap0[i], s.rss()-rss0[i]
		heap, rss = heap+h, rss+r
		per = append(per, fmt.Sprintf("%s RSS %.1f KB/conn, heap+stacks %.1f KB/conn", s.label,
			float64(r)/float64(w.perNode)/1024, float64(h)/float64(w.perNode)/1024))
		if profileDir != "" {
			check(os.WriteFile(profilePath(w.name(), s.file, "heap.pprof"), s.post("/profile/heap"), 0o644))
		}
	}
	total := float64(w.perNode * len(nodes))
	detail := fmt.Sprintf("%d connections (each node's /stats counts its %d); ", w.perNode*len(nodes), w.perNode) + strings.Join(per, "; ")
	if natsPID != 0 {
		r := procRSS(natsPID) - natsRSS0
		detail += fmt.Sprintf("; nats-server RSS %+.1f MB (%.2f KB/conn); all processes summed, nats-server included, %.1f KB/conn",
			float64(r)/(1<<20), float64(r)/total/1024, float64(rss+r)/total/1024)
	}
	return result{rssPer: float64(rss) / total, heapPer: float64(heap) / total, detail: detail}
}

// holder is a child process of the load tool holding idle connections.
type holder struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

// startHolder starts a child that dials n connections to url+"g<group>",
// connection i of it in group (first+i)/10, and returns once they are all
// open.
func startHolder(url string, n, first int) (*holder, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "-hold", url, "-hold-conns", strconv.Itoa(n), "-hold-first", strconv.Itoa(first))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	h := &holder{cmd: cmd, stdin: stdin}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		h.stop()
		return nil, fmt.Errorf("connection holder: %q %v", line, err)
	}
	return h, nil
}

// stop closes the child's stdin: it exits, and its connections close.
func (h *holder) stop() {
	_ = h.stdin.Close()
	done := make(chan struct{})
	go func() { _ = h.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = h.cmd.Process.Kill()
		<-done
	}
}

// holdConnections is the child mode: it dials n connections, 64 at a time,
// says "ready", and holds them until its stdin closes.
func holdConnections(url string, n, first int) {
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	conns := make([]*gws.Conn, n)
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			k := first + i
			conns[i] = dial(url+"g"+strconv.Itoa(k/10), &gws.BuiltinEventHandler{}, k)
			go conns[i].ReadLoop()
		}()
	}
	wg.Wait()
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.NetConn().Close()
	}
}
