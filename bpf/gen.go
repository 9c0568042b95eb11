package bpf

//go:generate go tool bpf2go -tags linux -target bpfel -type verdict -type listener -type pod_flags -type pod_key -type pod_info -type flow_key -cflags "-O2 -g -Wall -Werror" Capture capture.c -- -I./include
