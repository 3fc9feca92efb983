// etcd-load drives an etcd cluster the way etcd's own `benchmark put` and
// `benchmark range --consistency=l` do (C clients sharing N gRPC
// connections, each sending one request at a time), for a fixed time, and
// prints one JSON line: {"requests", "errors", "rps", "p50_ms", "p99_ms"}.
//
// It is built by bench/compare-etcd.sh against Debian's packaged etcd
// client (golang-etcd-server-dev), in GOPATH mode, since etcd's benchmark
// tool needs Go modules this machine cannot download.
//
//	etcd-load -endpoints 127.0.0.1:2379 -clients 64 -conns 64 -duration 5s put
//	etcd-load -endpoints A,B,C -clients 16 -conns 16 range
//	etcd-load -endpoints A,B,C leader     # prints the leader's endpoint
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/clientv3"
)

func main() {
	endpoints := flag.String("endpoints", "127.0.0.1:2379", "comma-separated client URLs or host:port")
	clients := flag.Int("clients", 1, "concurrent requesters")
	conns := flag.Int("conns", 1, "gRPC connections shared by the requesters")
	duration := flag.Duration("duration", 5*time.Second, "how long to send")
	keySize := flag.Int("key-size", 16, "key size in bytes")
	valSize := flag.Int("val-size", 100, "value size in bytes")
	keySpace := flag.Int("key-space-size", 100000, "distinct keys written (sequential)")
	flag.Parse()
	mode := flag.Arg(0)
	if mode == "leader" {
		printLeader(strings.Split(*endpoints, ","))
		return
	}
	if mode != "put" && mode != "range" {
		fmt.Fprintln(os.Stderr, "usage: etcd-load [flags] put|range|leader")
		os.Exit(2)
	}
	if *clients < 1 || *conns < 1 || *keySize < 8 {
		fmt.Fprintln(os.Stderr, "need -clients >= 1, -conns >= 1, -key-size >= 8")
		os.Exit(2)
	}

	cs := make([]*clientv3.Client, *conns)
	for i := range cs {
		c, err := clientv3.New(clientv3.Config{
			Endpoints:   strings.Split(*endpoints, ","),
			DialTimeout: 5 * time.Second,
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "connect:", err)
			os.Exit(1)
		}
		defer c.Close()
		cs[i] = c
	}
	value := make([]byte, *valSize)
	rand.Read(value)
	readKey := make([]byte, *keySize)
	if mode == "range" {
		if _, err := cs[0].Put(context.Background(), string(readKey), string(value)); err != nil {
			fmt.Fprintln(os.Stderr, "preload:", err)
			os.Exit(1)
		}
	}

	var mu sync.Mutex
	var lat []time.Duration
	errors := 0
	var next uint64
	deadline := time.Now().Add(*duration)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < *clients; w++ {
		wg.Add(1)
		go func(c *clientv3.Client) {
			defer wg.Done()
			var mine []time.Duration
			bad := 0
			key := make([]byte, *keySize)
			for time.Now().Before(deadline) {
				t := time.Now()
				var err error
				if mode == "put" {
					mu.Lock()
					n := next % uint64(*keySpace)
					next++
					mu.Unlock()
					binary.PutUvarint(key, n)
					_, err = c.Put(context.Background(), string(key), string(value))
				} else {
					_, err = c.Get(context.Background(), string(readKey))
				}
				if err != nil {
					bad++
					continue
				}
				mine = append(mine, time.Since(t))
			}
			mu.Lock()
			lat = append(lat, mine...)
			errors += bad
			mu.Unlock()
		}(cs[w%len(cs)])
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		i := int(p * float64(len(lat)))
		if i >= len(lat) {
			i = len(lat) - 1
		}
		return float64(lat[i].Microseconds()) / 1000
	}
	out, _ := json.Marshal(map[string]interface{}{
		"requests": len(lat),
		"errors":   errors,
		"rps":      float64(len(lat)) / elapsed,
		"p50_ms":   pct(0.50),
		"p99_ms":   pct(0.99),
	})
	fmt.Println(string(out))
}

// printLeader prints the endpoint whose member leads, or exits 1 if none
// does yet.
func printLeader(endpoints []string) {
	c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, "connect:", err)
		os.Exit(1)
	}
	defer c.Close()
	for _, ep := range endpoints {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := c.Status(ctx, ep)
		cancel()
		if err == nil && st.Leader != 0 && st.Leader == st.Header.MemberId {
			fmt.Println(ep)
			return
		}
	}
	fmt.Fprintln(os.Stderr, "no leader yet")
	os.Exit(1)
}
