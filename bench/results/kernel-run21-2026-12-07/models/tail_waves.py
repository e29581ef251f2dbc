from bench.kernel_case import case_mask
from bench.schedule_model import long_then_sorted_last_waves, length_classes_first, visited_blocks, makespan, descending
from bench import dram_model as dm
heads=32; cap=int(25e6//65536)
print(f"{'mask':14s} {'S':>6s}  " + "  ".join(f"{n:>14s}" for n in ["classes","kernel","long+2w","long+3w","long+4w"]))
for S in (4096,16384):
    for name in ["random-0.05","random-0.1","random-0.25","random-0.5","window-1024","global-window","causal"]:
        mask=case_mask(name,heads,S,device="cpu"); b=visited_blocks(mask,heads)
        orders={"classes":length_classes_first(b,0),"kernel":descending(b,0)}
        for w in (2,3,4): orders[f"long+{w}w"]=long_then_sorted_last_waves(b,0,w)
        ideal=sum(2.3+1.87*int(b[t]) for t in orders["kernel"])/132
        cells=[]
        for o in orders.values():
            ms=makespan([2.3+1.87*int(b[t]) for t in o],132)/ideal
            kv=dm.kv_over_least(mask,o,heads,tile_us=2.3,block_us=1.87,sms=132,capacity=cap)
            cells.append(f"{ms:5.3f} / {kv:4.2f}")
        print(f"{name:14s} {S:6d}  "+"  ".join(f"{c:>14s}" for c in cells), flush=True)
