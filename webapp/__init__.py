"""ScratchGPT's web app: plain-Python chat logic (`chat`) and the Gradio interface (`ui`)."""
