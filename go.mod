module github.com/embedwps/pubsub

go 1.24.0

require (
	github.com/golang-jwt/jwt/v5 v5.3.1
	github.com/lxzan/gws v1.10.2
	github.com/puzpuzpuz/xsync/v3 v3.5.1
	go.uber.org/goleak v1.3.0
	google.golang.org/protobuf v1.36.12
)

require github.com/klauspost/compress v1.17.9 // indirect
