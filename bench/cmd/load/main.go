// Command load drives benchserver processes over real loopback sockets, this
// library and its peers in the same run, and prints one table with every
// figure also as a ratio to ours.
//
//	go run ./cmd/load                # the quick set
//	go run ./cmd/load -full          # every workload of the issue
//
// Per run it reports deliveries per second, messages lost, p50/p99
// end-to-end latency and the server process's CPU time per delivery (from
// /proc/PID/stat); for idle connections, server RSS and Go heap per
// connection. Clients spread their source addresses over 127.0.0.x.
//
// The cluster workloads run ours as one node against ours as three nodes
// (benchserver -nats) on a nats-server of their own, all separate processes;
// see clusterImpls.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/lxzan/gws"

	"github.com/embedwps/pubsub/client"

	"github.com/embedwps/pubsub"
)

var impls = []string{"ours", "gws", "melody", "centrifuge"}

// Flags that shape every run.
var (
	beforeBin  string // benchserver built from -before, run as "ours@<rev>"
	match      string
	scale      = 1
	profileDir string
)

func main() {
	full := flag.Bool("full", false, "run every workload (takes long)")
	only := flag.String("impl", "", "comma-separated implementations (default all)")
	flag.StringVar(&match, "workload", "", "run only the workloads whose name contains this")
	flag.IntVar(&scale, "scale", 1, "multiply each throughput run's message count (longer, steadier runs)")
	before := flag.String("before", "", "also run ours as built from this git revision, as implementation \"ours@<rev>\" (a before/after comparison in one run)")
	flag.StringVar(&profileDir, "cpuprofile", "", "save CPU profiles of the server and the load tool for each run's measured phase, and each idle run's server heap profile, in this directory")
	hold := flag.String("hold", "", "child mode (the cluster idle workload starts it): hold -hold-conns idle connections to this URL + \"g<group>\"")
	holdConns := flag.Int("hold-conns", 0, "child mode: connections to hold")
	holdFirst := flag.Int("hold-first", 0, "child mode: the index of the first connection (groups of 10 and source addresses follow it)")
	flag.Parse()
	if *hold != "" {
		raiseFDLimit()
		holdConnections(*hold, *holdConns, *holdFirst)
		return
	}
	if profileDir != "" {
		if err := os.MkdirAll(profileDir, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, "load:", err)
			os.Exit(1)
		}
	}
	raiseFDLimit()
	if *only != "" {
		impls = strings.Split(*only, ",")
	}
	bin := buildServer(".")
	defer os.RemoveAll(filepath.Dir(bin))
	if *before != "" {
		name := "ours@" + *before
		beforeBin = buildRevision(*before)
		defer os.RemoveAll(filepath.Dir(beforeBin))
		impls = slices.Insert(impls, slices.Index(impls, "ours")+1, name)
	}

	defer func() {
		if natsBin != "" {
			os.RemoveAll(filepath.Dir(natsBin))
		}
	}()

	var table []row
	for _, w := range workloads(*full) {
		list := impls
		if o, ok := w.(ownImpls); ok && o.impls() != nil {
			list = o.impls()
		}
		results := map[string]result{}
		for _, impl := range list {
			fmt.Fprintf(os.Stderr, "%-44s %-10s ", w.name(), impl)
			r := runWorkload(w, bin, impl)
			fmt.Fprintln(os.Stderr, r.summary())
			results[impl] = r
		}
		table = append(table, row{w.name(), w.kind(), list, results})
	}
	printTable(table)
}

// ownImpls is a workload that may compare implementations of its own (the
// cluster workloads: ours on one node and on three) whatever -impl says;
// nil: the usual ones.
type ownImpls interface{ impls() []string }

// runWorkload runs one workload, turning a failure into a note in the table.
func runWorkload(w workload, bin, impl string) (r result) {
	defer func() {
		if e := recover(); e != nil {
			r = result{note: fmt.Sprint("failed: ", e)}
		}
	}()
	return w.run(bin, impl)
}

// raiseFDLimit raises the soft limit on open files to the hard one. The
// hard limit (20,000 where RESULTS.md was made) bounds the connections one
// process can hold.
func raiseFDLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

// isOurs: this library, as built now or from -before.
func isOurs(impl string) bool { return impl == "ours" || strings.HasPrefix(impl, "ours@") }

// buildServer builds cmd/benchserver of the bench module in dir.
func buildServer(dir string) string {
	tmp, err := os.MkdirTemp("", "benchserver")
	check(err)
	bin := filepath.Join(tmp, "benchserver")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/benchserver")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		os.Exit(1)
	}
	return bin
}

// buildRevision builds cmd/benchserver from git revision rev of this
// repository, in a temporary worktree.
func buildRevision(rev string) string {
	tree, err := os.MkdirTemp("", "bench-before")
	check(err)
	defer os.RemoveAll(tree)
	git := func(args ...string) {
		out, err := exec.Command("git", args...).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "git %s: %v\n%s", strings.Join(args, " "), err, out)
			os.Exit(1)
		}
	}
	git("worktree", "add", "--detach", tree, rev)
	defer git("worktree", "remove", "--force", tree)
	return buildServer(filepath.Join(tree, "bench"))
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
}

// target is what a throughput run drives: one server process, or a
// cluster of them on NATS.
type target interface {
	// subURL is the URL subscriber i dials to join group; pubURL, the
	// URL of publisher i.
	subURL(i int, group string) string
	pubURL(i int) string
	isCentrifuge() bool
	// isOurs: this module's server, whose subscribers are its Go client.
	isOurs() bool
	// procs are the server processes: their CPU time is the run's.
	procs() []proc
	// brokers describes the brokers' counters (cluster), or is "".
	brokers() string
	profile(workload string) (stop func())
	stop()
}

// proc is a server process.
type proc struct {
	label string
	pid   int
}

// usage is what a process has used so far: user+system CPU time, and
// write-family system calls and bytes (/proc/PID/io).
type usage struct {
	cpu          time.Duration
	syscw, wchar int64
}

func measure(ps []proc) []usage {
	out := make([]usage, len(ps))
	for i, p := range ps {
		out[i].cpu = procCPU(p.pid)
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", p.pid)); err == nil {
			for _, l := range strings.Split(string(b), "\n") {
				k, v, _ := strings.Cut(l, ": ")
				n, _ := strconv.ParseInt(v, 10, 64)
				switch k {
				case "syscw":
					out[i].syscw = n
				case "wchar":
					out[i].wchar = n
				}
			}
		}
	}
	return out
}

// usageDetail: each process's share of the CPU used between u0 and u1,
// and its write system calls per delivery.
func usageDetail(ps []proc, u0, u1 []usage, deliveries int64) string {
	var total time.Duration
	for i := range ps {
		total += u1[i].cpu - u0[i].cpu
	}
	if total == 0 || deliveries == 0 {
		return ""
	}
	var parts []string
	if len(ps) > 1 {
		var w int64
		for i := range ps {
			w += u1[i].syscw - u0[i].syscw
		}
		parts = append(parts, fmt.Sprintf("all %.3f writes/delivery", float64(w)/float64(deliveries)))
	}
	for i, p := range ps {
		parts = append(parts, fmt.Sprintf("%s %.0f%% of CPU, %.3f writes/delivery", p.label,
			100*float64(u1[i].cpu-u0[i].cpu)/float64(total), float64(u1[i].syscw-u0[i].syscw)/float64(deliveries)))
	}
	return fmt.Sprintf("server CPU %v: ", total.Round(10*time.Millisecond)) + strings.Join(parts, ", ")
}

// startTarget starts impl: a cluster on NATS (nodesOf), or one benchserver.
func startTarget(bin, impl string) target {
	if n := nodesOf(impl); n > 0 {
		return startCluster(bin, n)
	}
	return startServer(bin, impl)
}

// server is one running benchserver process.
type server struct {
	cmd   *exec.Cmd
	addr  string
	impl  string
	label string // in notes
	file  string // in profile file names
}

func startServer(bin, impl string, args ...string) *server {
	arg := impl
	if isOurs(impl) && impl != "ours" {
		bin, arg = beforeBin, "ours"
	}
	cmd := exec.Command(bin, append([]string{"-impl", arg}, args...)...)
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	check(cmd.Start())
	var line string
	_, err := fmt.Fscanln(out, &line, &line)
	check(err)
	return &server{cmd: cmd, addr: line, impl: impl, label: impl, file: impl}
}

func (s *server) stop() { _ = s.cmd.Process.Kill(); _ = s.cmd.Wait() }

func (s *server) subURL(_ int, group string) string { return s.url(group, false) }
func (s *server) pubURL(int) string                 { return s.url("pub", true) }
func (s *server) isCentrifuge() bool                { return s.impl == "centrifuge" }
func (s *server) isOurs() bool                      { return isOurs(s.impl) }
func (s *server) procs() []proc                     { return []proc{{s.label, s.cmd.Process.Pid}} }
func (s *server) brokers() string                   { return "" }

func (s *server) url(group string, pub bool) string {
	q := "group=" + group
	if pub {
		q += "&pub=1"
	}
	if isOurs(s.impl) {
		return "ws://" + s.addr + "/client/hubs/bench?" + q
	}
	return "ws://" + s.addr + "/ws?" + q
}

// cpu returns the server's user+system CPU time so far.
func (s *server) cpu() time.Duration { return procCPU(s.cmd.Process.Pid) }

// procCPU returns a process's user+system CPU time so far.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	check(err)
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// post calls one of the server's control endpoints and returns the body.
func (s *server) post(path string) []byte {
	resp, err := http.Post("http://"+s.addr+path, "", nil)
	check(err)
	defer resp.Body.Close()
	var b bytes.Buffer
	_, err = b.ReadFrom(resp.Body)
	check(err)
	return b.Bytes()
}

// profile starts CPU profiles of the server and of this process when
// -cpuprofile is set; the function it returns saves them.
func (s *server) profile(workload string) (stop func()) {
	if profileDir == "" {
		return func() {}
	}
	var own bytes.Buffer
	s.post("/profile/start")
	check(pprof.StartCPUProfile(&own))
	return func() {
		check(os.WriteFile(profilePath(workload, s.file, "pprof"), s.post("/profile/stop"), 0o644))
		pprof.StopCPUProfile()
		check(os.WriteFile(profilePath(workload, s.file, "load.pprof"), own.Bytes(), 0o644))
	}
}

func profilePath(workload, impl, ext string) string {
	return filepath.Join(profileDir, strings.NewReplacer(" ", "_", ",", "", "×", "x").Replace(workload)+"."+impl+"."+ext)
}

func (s *server) rss() int64 { return procRSS(s.cmd.Process.Pid) }

// procRSS returns a process's resident set size.
func procRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	check(err)
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			kb, _ := strconv.ParseInt(strings.Fields(l)[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

func (s *server) heap() int64 {
	st := s.stats()
	return st["heapInuse"] + st["stackInuse"]
}

// stats is the server's /stats (after a GC).
func (s *server) stats() map[string]int64 {
	resp, err := http.Get("http://" + s.addr + "/stats")
	check(err)
	defer resp.Body.Close()
	var st map[string]int64
	check(json.NewDecoder(resp.Body).Decode(&st))
	return st
}

// recorder collects what the subscribers receive.
type recorder struct {
	start    time.Time
	counts   []atomic.Int32 // deliveries per message
	expected []int32        // subscribers per message
	done     atomic.Int64   // messages delivered to every subscriber
	progress chan struct{}
	mu       sync.Mutex
	lat      []int64 // microseconds
	last     atomic.Int64
	warm     atomic.Int64 // subscribers that got a warm-up probe
}

// subscriber parses the payloads "T<seq>:<nanos>:…" and "W…" (warm-up)
// out of whatever frame wraps them. Ours is this module's Go client
// (client/, on json.webpubsub.azure.v1), so that the client is exercised
// at load; the peers' are bare gws clients.
type subscriber struct {
	gws.BuiltinEventHandler
	rec    *recorder
	warmed bool
	lat    []int64
	cent   bool
	conn   *gws.Conn      // a peer's
	client *client.Client // ours
}

func (s *subscriber) OnMessage(c *gws.Conn, m *gws.Message) {
	defer m.Close()
	s.take(m.Bytes())
}

// take records one message's payload. The client's events come one at a
// time, as gws's do, so a subscriber's fields have one writer.
func (s *subscriber) take(data []byte) {
	now := time.Now().UnixNano()
	for {
		i := bytes.Index(data, []byte(`"`))
		if i < 0 || i+1 >= len(data) {
			break
		}
		data = data[i+1:]
		switch data[0] {
		case 'W':
			if !s.warmed {
				s.warmed = true
				s.rec.warm.Add(1)
			}
		case 'T':
			end := bytes.IndexByte(data, ':')
			if end < 0 {
				continue
			}
			rest := data[end+1:]
			end2 := bytes.IndexByte(rest, ':')
			if end2 < 0 {
				continue
			}
			seq, err1 := strconv.Atoi(string(data[1:end]))
			ts, err2 := strconv.ParseInt(string(rest[:end2]), 10, 64)
			if err1 != nil || err2 != nil || seq < 0 || seq >= len(s.rec.counts) {
				continue
			}
			s.lat = append(s.lat, (now-ts)/1000)
			s.rec.last.Store(now)
			if s.rec.counts[seq].Add(1) == s.rec.expected[seq] {
				s.rec.done.Add(1)
				select {
				case s.rec.progress <- struct{}{}:
				default:
				}
			}
		}
	}
}

// dialClient connects our Go client from loopback address i%50, as dial
// does a gws client.
func dialClient(url string, sub *subscriber, i int) *client.Client {
	ip := net.IPv4(127, 0, 0, byte(1+i%50))
	c, err := client.New(url, client.Options{
		Protocol:             client.JSON(),
		DisableAutoReconnect: true, // a lost subscriber is a lost run
		Dialer:               &net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: 10 * time.Second},
		OnGroupMessage:       func(m client.Message) { sub.take(m.Data) },
	})
	check(err)
	for attempt := 0; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err = c.Start(ctx)
		cancel()
		if err == nil {
			return c
		}
		if attempt == 5 {
			panic(err) // the workload fails; runWorkload reports it and the run goes on
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// close ends a subscriber's connection.
func (s *subscriber) close() {
	if s.client != nil {
		s.client.Stop()
		return
	}
	s.conn.NetConn().Close()
}

func dial(url string, h gws.Event, i int) *gws.Conn {
	ip := net.IPv4(127, 0, 0, byte(1+i%50))
	for attempt := 0; ; attempt++ {
		c, _, err := gws.NewClient(h, &gws.ClientOption{
			Addr:               url,
			ReadMaxPayloadSize: 32 << 20,
			NewDialer: func() (gws.Dialer, error) {
				return &net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: 10 * time.Second}, nil
			},
		})
		if err == nil {
			return c
		}
		if attempt == 5 {
			panic(err) // the workload fails; runWorkload reports it and the run goes on
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// connectSubscribers dials n subscribers, group(i) each, 64 at a time;
// with viaClient, ours are this module's Go client.
func connectSubscribers(s target, rec *recorder, n int, group func(int) string, viaClient bool) []*subscriber {
	subs := make([]*subscriber, n)
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for i := range subs {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			sub := &subscriber{rec: rec, cent: s.isCentrifuge()}
			if viaClient && s.isOurs() {
				sub.client = dialClient(s.subURL(i, group(i)), sub, i)
				subs[i] = sub
				return
			}
			sub.conn = dial(s.subURL(i, group(i)), sub, i)
			if sub.cent {
				_ = sub.conn.WriteString(`{"id":1,"connect":{}}`)
			}
			go sub.conn.ReadLoop()
			subs[i] = sub
		}()
	}
	wg.Wait()
	return subs
}

type publisher struct {
	gws.BuiltinEventHandler
	conn *gws.Conn
	cent bool
	id   int
}

func newPublisher(s target, i int) *publisher {
	p := &publisher{cent: s.isCentrifuge()}
	p.conn = dial(s.pubURL(i), p, 49-i)
	if p.cent {
		_ = p.conn.WriteString(`{"id":1,"connect":{}}`)
	}
	go p.conn.ReadLoop()
	return p
}

func (p *publisher) publish(group string, payload []byte) {
	var frame []byte
	if p.cent {
		p.id++
		frame = fmt.Appendf(nil, `{"id":%d,"publish":{"channel":%q,"data":%s}}`, p.id+1, group, payload)
	} else {
		frame = append(append([]byte(group), '|'), payload...)
	}
	_ = p.conn.WriteMessage(gws.OpcodeText, frame)
}

// payload is a JSON string of size bytes: "T<seq>:<nanos>:xxx…".
func payload(seq, size int) []byte {
	b := fmt.Appendf(nil, `"T%d:%d:`, seq, time.Now().UnixNano())
	for len(b) < size-1 {
		b = append(b, 'x')
	}
	return append(b, '"')
}

// result is one workload on one implementation.
type result struct {
	deliveries, lost int64
	perSec           float64
	p50, p99         time.Duration
	cpuPer           time.Duration // server CPU per delivery
	rssPer, heapPer  float64       // idle: bytes per connection
	note             string
	detail           string // for the notes under the tables (clusters)
}

func (r result) summary() string {
	if r.rssPer > 0 {
		return fmt.Sprintf("rss %.1f KB/conn, heap %.1f KB/conn %s", r.rssPer/1024, r.heapPer/1024, r.detail)
	}
	return fmt.Sprintf("%.0f/s lost %d p50 %v p99 %v cpu %v/delivery %s %s", r.perSec, r.lost, r.p50, r.p99, r.cpuPer, r.note, r.detail)
}

type workload interface {
	name() string
	kind() string
	run(bin, impl string) result
}

// fanout: one publisher, groups of size subscribers, size-byte messages,
// inflight messages not yet delivered to everyone at a time. A cluster
// fan-out compares ours on one node with ours on clusterNodes nodes, the
// subscribers spread evenly over them and the publisher on the first (and
// with ours on one node on NATS).
type fanout struct {
	subs, groups, size, inflight, messages, publishers int
	cluster                                            bool
}

func (f fanout) impls() []string {
	if f.cluster {
		return clusterImpls
	}
	return nil
}

func (f fanout) name() string {
	if f.cluster {
		return fmt.Sprintf("cluster fan-out %d subs, %d B, %d in flight", f.subs, f.size, f.inflight)
	}
	if f.groups > 1 {
		return fmt.Sprintf("small groups %d×%d, %d B, %d in flight", f.groups, f.subs/f.groups, f.size, f.inflight)
	}
	return fmt.Sprintf("fan-out %d subs, %d B, %d in flight", f.subs, f.size, f.inflight)
}

func (f fanout) kind() string { return "throughput" }

func (f fanout) run(bin, impl string) result {
	s := startTarget(bin, impl)
	defer s.stop()
	rec := &recorder{counts: make([]atomic.Int32, f.messages), expected: make([]int32, f.messages), progress: make(chan struct{}, 1)}
	per := f.subs / f.groups
	group := func(i int) string { return "g" + strconv.Itoa(i/per) }
	subs := connectSubscribers(s, rec, f.subs, group, true)
	pubs := make([]*publisher, f.publishers)
	for i := range pubs {
		pubs[i] = newPublisher(s, i)
	}
	// Warm up until every subscriber is in its group.
	for deadline := time.Now().Add(60 * time.Second); rec.warm.Load() < int64(f.subs); {
		if time.Now().After(deadline) {
			return result{note: fmt.Sprintf("only %d of %d subscribers ready", rec.warm.Load(), f.subs)}
		}
		for g := 0; g < f.groups; g++ {
			pubs[0].publish("g"+strconv.Itoa(g), []byte(`"W"`))
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // let the last probes drain

	stopProfile := s.profile(f.name())
	u0 := measure(s.procs())
	own0 := procCPU(os.Getpid())
	start := time.Now()
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < f.messages; i++ {
		rec.expected[i] = int32(per)
	}
	stalled := false
	for i := 0; i < f.messages; i++ {
		for int64(i)-rec.done.Load() >= int64(f.inflight) {
			select {
			case <-rec.progress:
			case <-time.After(5 * time.Second):
				stalled = true
			}
			if stalled {
				break
			}
		}
		if stalled {
			break
		}
		pubs[i%len(pubs)].publish("g"+strconv.Itoa(rng.IntN(f.groups)), payload(i, f.size))
	}
	for !stalled && rec.done.Load() < int64(f.messages) {
		select {
		case <-rec.progress:
		case <-time.After(5 * time.Second):
			stalled = true
		}
	}
	end := time.Unix(0, rec.last.Load())
	u1 := measure(s.procs())
	own := procCPU(os.Getpid()) - own0
	stopProfile()
	var cpu time.Duration
	for i := range u1 {
		cpu += u1[i].cpu - u0[i].cpu
	}
	var r result
	for i := range rec.counts {
		r.deliveries += int64(rec.counts[i].Load())
	}
	r.lost = int64(f.messages)*int64(per) - r.deliveries
	if el := end.Sub(start); el > 0 {
		r.perSec = float64(r.deliveries) / el.Seconds()
	}
	if r.deliveries > 0 {
		r.cpuPer = cpu / time.Duration(r.deliveries)
	}
	if s.isOurs() && r.deliveries > 0 && own > 0 {
		// The Go client's side: this process receives every delivery
		// (its publishers cost little beside), so its CPU per delivery
		// bounds what one client process can take.
		per := own / time.Duration(r.deliveries)
		r.detail = fmt.Sprintf("Go client process: %v CPU per delivery, %.0f deliveries/s per core", per, float64(time.Second)/float64(per))
	}
	if f.cluster {
		if r.detail != "" {
			r.detail += "; "
		}
		// How busy the machine was: the load tool shares its cores.
		el := time.Since(start)
		r.detail += fmt.Sprintf("%v: server processes %.2f cores, load tool %.2f cores; ", el.Round(10*time.Millisecond),
			cpu.Seconds()/el.Seconds(), own.Seconds()/el.Seconds()) + usageDetail(s.procs(), u0, u1, r.deliveries)
		if b := s.brokers(); b != "" {
			r.detail += "; " + b
		}
	}
	var lat []int64
	for _, sub := range subs {
		lat = append(lat, sub.lat...)
	}
	slices.Sort(lat)
	if len(lat) > 0 {
		r.p50 = time.Duration(lat[len(lat)/2]) * time.Microsecond
		r.p99 = time.Duration(lat[len(lat)*99/100]) * time.Microsecond
	}
	var wg sync.WaitGroup
	for _, sub := range subs {
		wg.Go(sub.close)
	}
	wg.Wait()
	for _, p := range pubs {
		p.conn.NetConn().Close()
	}
	return r
}

// idle: n connections that do nothing; server memory per connection.
type idle struct{ conns int }

func (w idle) name() string { return fmt.Sprintf("idle memory, %d connections", w.conns) }
func (w idle) kind() string { return "memory" }

func (w idle) run(bin, impl string) result {
	s := startServer(bin, impl)
	defer s.stop()
	heap0, rss0 := s.heap(), s.rss()
	rec := &recorder{counts: make([]atomic.Int32, 0), progress: make(chan struct{}, 1)}
	// Bare connections: what the server holds per connection, not a client.
	subs := connectSubscribers(s, rec, w.conns, func(i int) string { return "g" + strconv.Itoa(i/10) }, false)
	time.Sleep(2 * time.Second) // let the server settle: not a synchronisation, a measurement condition
	heap1, rss1 := s.heap(), s.rss()
	if profileDir != "" {
		check(os.WriteFile(profilePath(w.name(), impl, "heap.pprof"), s.post("/profile/heap"), 0o644))
	}
	for _, sub := range subs {
		sub.conn.NetConn().Close()
	}
	return result{rssPer: float64(rss1-rss0) / float64(w.conns), heapPer: float64(heap1-heap0) / float64(w.conns)}
}

// churn: connects and disconnects per second, 64 at a time. Ours
// authenticates each with a JWT (the peers have no auth to do).
type churn struct{ conns int }

func (w churn) name() string { return fmt.Sprintf("connect churn, %d connects", w.conns) }
func (w churn) kind() string { return "rate" }

func (w churn) run(bin, impl string) result {
	s := startServer(bin, impl)
	defer s.stop()
	url := s.url("churn", false)
	if isOurs(impl) {
		svc, err := pubsub.New(pubsub.Config{Endpoint: "http://" + s.addr, AccessKey: benchAccessKey})
		check(err)
		tok, err := svc.ClientToken("bench", pubsub.TokenOptions{UserID: "churner"})
		check(err)
		url += "&access_token=" + tok
	}
	stopProfile := s.profile(w.name())
	cpu0, start := s.cpu(), time.Now()
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for i := 0; i < w.conns; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			c := dial(url, &gws.BuiltinEventHandler{}, i)
			_ = c.WriteClose(1000, nil)
		}()
	}
	wg.Wait()
	el, cpu := time.Since(start), s.cpu()-cpu0
	stopProfile()
	return result{deliveries: int64(w.conns), perSec: float64(w.conns) / el.Seconds(), cpuPer: cpu / time.Duration(w.conns)}
}

// restSends: REST sendToAll and sendToConnection requests per second to a
// hub of 100 subscribers (ours only: the peers have no REST API).
type restSends struct{ requests int }

func (w restSends) name() string { return fmt.Sprintf("REST sends, %d requests", w.requests) }
func (w restSends) kind() string { return "rest" }

func (w restSends) run(bin, impl string) result {
	if !isOurs(impl) {
		return result{note: "no REST API"}
	}
	s := startServer(bin, impl)
	defer s.stop()
	rec := &recorder{counts: make([]atomic.Int32, 0), progress: make(chan struct{}, 1)}
	subs := connectSubscribers(s, rec, 100, func(int) string { return "r" }, false)
	defer func() {
		for _, sub := range subs {
			sub.conn.NetConn().Close()
		}
	}()
	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	stopProfile := s.profile(w.name())
	cpu0, start := s.cpu(), time.Now()
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := 0; i < w.requests; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			path := "/api/hubs/bench/:send"
			if i%2 == 1 {
				path = "/api/hubs/bench/connections/none/:send"
			}
			u := "http://" + s.addr + path + "?api-version=2024-12-01"
			tok, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"aud": u, "exp": time.Now().Add(time.Hour).Unix()}).SignedString([]byte(benchAccessKey))
			req, _ := http.NewRequest("POST", u, strings.NewReader("hello"))
			req.Header.Set("Authorization", "Bearer "+tok)
			req.Header.Set("Content-Type", "text/plain")
			resp, err := client.Do(req)
			if err != nil || resp.StatusCode != http.StatusAccepted {
				failed.Add(1)
			}
			if resp != nil {
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	el, cpu := time.Since(start), s.cpu()-cpu0
	stopProfile()
	return result{deliveries: int64(w.requests), lost: failed.Load(), perSec: float64(w.requests) / el.Seconds(), cpuPer: cpu / time.Duration(w.requests)}
}

// benchAccessKey is cmd/benchserver's AccessKey.
const benchAccessKey = "bench-access-key-0123456789abcdef"

func workloads(full bool) []workload {
	var ws []workload
	budget := 400_000 // deliveries per run
	add := func(subs, size, inflight int) {
		msgs := max(20, min(5000, budget/subs))
		if size >= 16<<10 {
			msgs = max(10, msgs/8)
		}
		msgs *= scale
		ws = append(ws, fanout{subs: subs, groups: 1, size: size, inflight: inflight, messages: msgs, publishers: 1})
	}
	if full {
		for _, n := range []int{100, 1000, 10000} {
			for _, size := range []int{64, 1024, 16 << 10} {
				for _, inflight := range []int{1, 32} {
					add(n, size, inflight)
				}
			}
		}
	} else {
		add(1000, 1024, 8)
		add(1000, 64, 32)
		add(5000, 64, 32)
		add(10000, 1024, 1)
	}
	ws = append(ws, fanout{subs: 10000, groups: 1000, size: 256, inflight: 32, messages: 20000 * scale, publishers: 4})
	// The cluster: ours on one node against ours on three, 3,000 subscribers.
	clusterFanout := func(size, inflight int) {
		ws = append(ws, fanout{subs: 3000, groups: 1, size: size, inflight: inflight, messages: 400 * scale, publishers: 1, cluster: true})
	}
	if full {
		for _, size := range []int{64, 1024} {
			for _, inflight := range []int{1, 32} {
				clusterFanout(size, inflight)
			}
		}
	} else {
		clusterFanout(1024, 32)
	}
	ws = append(ws, churn{5000 * scale}, restSends{20000 * scale})
	ws = append(ws, idle{10000})
	if full {
		ws = append(ws, idleCluster{perNode: 15000})
	}
	var l syscall.Rlimit
	if full && syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Max > 52000 {
		ws = append(ws, idle{50000}) // needs a hard fd limit above 50,000
	}
	if match != "" {
		ws = slices.DeleteFunc(ws, func(w workload) bool { return !strings.Contains(w.name(), match) })
	}
	return ws
}

type row struct {
	name, kind string
	impls      []string
	results    map[string]result
}

func ratio(v, ours float64) string {
	if ours == 0 || v == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", v/ours)
}

func printTable(rows []row) {
	fmt.Println("| workload | impl | deliveries/s | lost | p50 | p99 | server CPU/delivery | vs ours: rate, CPU, p99 |")
	fmt.Println("|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		if r.kind != "throughput" {
			continue
		}
		o := r.results["ours"]
		for _, impl := range r.impls {
			x := r.results[impl]
			fmt.Printf("| %s | %s | %.0f | %d | %v | %v | %v | %s, %s, %s |\n", r.name, impl, x.perSec, x.lost,
				x.p50.Round(time.Microsecond), x.p99.Round(time.Microsecond), x.cpuPer.Round(10*time.Nanosecond),
				ratio(x.perSec, o.perSec), ratio(float64(x.cpuPer), float64(o.cpuPer)), ratio(float64(x.p99), float64(o.p99)))
		}
	}
	fmt.Println()
	fmt.Println("| workload | impl | per second | failed | server CPU per operation | vs ours: rate, CPU |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, r := range rows {
		if r.kind != "rate" && r.kind != "rest" {
			continue
		}
		o := r.results["ours"]
		for _, impl := range r.impls {
			x := r.results[impl]
			if x.note != "" {
				fmt.Printf("| %s | %s | – | – | – | %s |\n", r.name, impl, x.note)
				continue
			}
			fmt.Printf("| %s | %s | %.0f | %d | %v | %s, %s |\n", r.name, impl, x.perSec, x.lost, x.cpuPer.Round(10*time.Nanosecond),
				ratio(x.perSec, o.perSec), ratio(float64(x.cpuPer), float64(o.cpuPer)))
		}
	}
	fmt.Println()
	fmt.Println("| workload | impl | server RSS/conn | Go heap+stacks/conn | vs ours: RSS |")
	fmt.Println("|---|---|---|---|---|")
	for _, r := range rows {
		if r.kind != "memory" {
			continue
		}
		o := r.results["ours"]
		for _, impl := range r.impls {
			x := r.results[impl]
			if x.note != "" {
				fmt.Printf("| %s | %s | – | – | %s |\n", r.name, impl, x.note)
				continue
			}
			fmt.Printf("| %s | %s | %.1f KB | %.1f KB | %s |\n", r.name, impl, x.rssPer/1024, x.heapPer/1024, ratio(x.rssPer, o.rssPer))
		}
	}
	var notes []string
	for _, r := range rows {
		for _, impl := range r.impls {
			if d := r.results[impl].detail; d != "" {
				notes = append(notes, fmt.Sprintf("- %s, %s: %s", r.name, impl, d))
			}
		}
	}
	if len(notes) > 0 {
		fmt.Println()
		fmt.Println(strings.Join(notes, "\n"))
	}
}
