# Sourced by test.sh and quickstart.sh: `phase NAME COMMAND...` runs a step and remembers how long
# it took; the times are printed when the script exits, however it exits.
declare -a phase_names=() phase_secs=()
phase() {
  local name=$1 start=$SECONDS
  shift
  echo "=== $name"
  "$@"
  phase_names+=("$name")
  phase_secs+=($((SECONDS - start)))
}
report_phases() {
  echo "=== time per phase"
  for i in "${!phase_names[@]}"; do printf '  %-8s %5d s\n' "${phase_names[$i]}" "${phase_secs[$i]}"; done
}
trap report_phases EXIT
