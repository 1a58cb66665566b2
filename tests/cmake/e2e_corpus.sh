# e2e_corpus.sh: sourced by the edit-train-gpt test scripts, which take the arguments
# "MPIEXEC... -- PREPARE TRAIN WORK". Sets the array mpiexec and prepare, train and work, then
# makes WORK anew with a small corpus, prepared into WORK/data (train_*.bin, val_*.bin): 300 lines
# "line <i mod MODULUS> of <WORDS>", so each script's corpus is its own.
# Use: source e2e_corpus.sh MODULUS "WORDS" "$@"
e2e_modulus=$1 e2e_words=$2
shift 2
mpiexec=()
while [[ $1 != "--" ]]; do mpiexec+=("$1"); shift; done
shift
prepare=$1 train=$2 work=$3
rm -rf "$work" && mkdir -p "$work/text"
for i in $(seq 1 300); do echo "line $((i % e2e_modulus)) of $e2e_words"; done > "$work/text/corpus.txt"
"$prepare" --out "$work/data" --val-fraction 0.1 "$work/text" > /dev/null || { echo "prepare failed"; exit 1; }
